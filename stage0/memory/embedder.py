"""The default embedder: wordllama's `l2_supercat` model (256 dimensions), whose weights and
tokenizer ship inside the `wordllama` wheel. It is loaded from the installed package folder
with downloads disabled, so embedding never touches the network; about 20,000 short texts a
second on one core here (tools/bench_memory.py prints the figure of each run).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from stage0.errors import LoglineError

MODEL = "wordllama-l2_supercat-256"
DIMENSIONS = 256
_LOCK = threading.Lock()
_MODEL: Any = None


def _load() -> Any:
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            try:
                import wordllama
                from wordllama import WordLlama
            except ImportError:
                raise LoglineError("MEMORY_EMBEDDER_UNAVAILABLE", "the wordllama package is "
                                   "not installed (pip install -e .)") from None
            folder = Path(wordllama.__file__).parent
            try:
                _MODEL = WordLlama.load(config="l2_supercat", dim=DIMENSIONS, cache_dir=folder,
                                        disable_download=True)
            except Exception as exc:  # files missing from the installed package
                raise LoglineError("MEMORY_EMBEDDER_UNAVAILABLE", f"wordllama could not load "
                                   f"its l2_supercat weights from {folder}: "
                                   f"{type(exc).__name__}") from None
        return _MODEL


def embed(texts: list[str]) -> Any:
    """Unit-length vectors (a numpy array, one row per text)."""
    return _load().embed(texts, norm=True, batch_size=256)
