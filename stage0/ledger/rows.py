"""NDJSON row files (ROW/): strict parsing with file:line errors, and in-place rewriting."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stage0.errors import LoglineError


@dataclass(frozen=True)
class Row:
    path: Path
    line: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_line(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def read(path: Path) -> list[Row]:
    """Every non-blank line of an NDJSON file as a JSON object, or a LoglineError at file:line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LoglineError("ROW_UNREADABLE", exc.strerror or str(exc), str(path)) from None
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = parse_line(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LoglineError("ROW_BAD_ENCODING", f"not UTF-8 ({exc.reason})", where) from None
        except (ValueError, RecursionError) as exc:
            raise LoglineError("ROW_BAD_JSON", str(exc), where) from None
        if not isinstance(data, dict):
            raise LoglineError("ROW_NOT_OBJECT", "each line must be one JSON object", where)
        rows.append(Row(path, number, data))
    return rows


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files named, and *.ndjson and *.yaml (contracts) under directories named, in a
    stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted([*path.rglob("*.ndjson"), *path.rglob("*.yaml")]))
        elif path.exists():
            out.append(path)
        else:
            raise LoglineError("ROW_NOT_FOUND", "no such file or directory", str(path))
    return out


def write(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite an NDJSON file atomically (a crash leaves the old file, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
