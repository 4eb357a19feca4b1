"""Live text of a model's answer while it is written (docs/prompts.md, "Streaming").

A caller that wants the text as the model writes it (POST /api/chat, the gateway's
`stream: true`) sets a `Listener` for its thread with `listening()`; every chat call the
host makes on that thread (ctx.llm, through provider_exec, in the loader running the
prompt kernel) is then streamed from the provider, and the listener hears `attempt()` when
an HTTP attempt starts (a retry or a repair request: the text heard so far is void) and
`raw(text)` for each piece of the answer as it arrives. The call's hardening is unchanged:
idle timeout, total timeout, size cap, and the listener's `cancel` event (set when the
client goes away) stops the call.

`TextExtractor` turns the raw pieces of a JSON answer `{"text": "...", ...}` into the
decoded characters of its top-level `text` field as they arrive, escapes split across
pieces included; anything before the first `{` (a ```json fence) is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}


class Listener(Protocol):
    cancel: threading.Event

    def attempt(self) -> None: ...

    def raw(self, text: str) -> None: ...


_local = threading.local()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Stream the chat calls this thread makes inside the block to `listener`."""
    before = getattr(_local, "listener", None)
    _local.listener = listener
    try:
        yield
    finally:
        _local.listener = before


def current() -> Listener | None:
    listener: Listener | None = getattr(_local, "listener", None)
    return listener


class TextExtractor:
    """Fed the raw text of a JSON object piece by piece; `feed` returns the new decoded
    characters of its top-level "text" string (the first one), "" when there are none."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False      # the first '{' was seen
        self.in_string = False
        self.escape = ""          # an escape being read: "\\", "\\u12", ...
        self.expect_key = False   # at depth 1, the next string is a key
        self.key: list[str] | None = None  # the key being read, raw
        self.last_key: str | None = None
        self.emitting = False     # inside the value of "text"
        self.done = False         # the text's value ended
        self.high: int | None = None  # a high surrogate waiting for its pair
        self.text: list[str] = []

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for ch in piece:
            self._char(ch, out)
        new = "".join(out)
        if new:
            self.text.append(new)
        return new

    def _char(self, ch: str, out: list[str]) -> None:
        if not self.started:
            if ch == "{":
                self.started, self.depth, self.expect_key = True, 1, True
            return
        if self.in_string:
            self._string_char(ch, out)
            return
        if ch == '"':
            self.in_string = True
            if self.depth == 1 and self.expect_key:
                self.key = []
            elif self.depth == 1 and self.last_key == "text" and not self.done:
                self.emitting = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
        elif ch == "," and self.depth == 1:
            self.expect_key = True
        elif ch == ":" and self.depth == 1:
            self.expect_key = False

    def _string_char(self, ch: str, out: list[str]) -> None:
        if self.escape:
            self.escape += ch
            if self.escape[1] == "u":
                if len(self.escape) < 6:
                    return
                self._decoded(chr(int(self.escape[2:], 16)) if all(
                    c in "0123456789abcdefABCDEF" for c in self.escape[2:]) else "\ufffd", out)
            else:
                self._decoded(_ESCAPES.get(ch, ch), out)
            self.escape = ""
            return
        if ch == "\\":
            self.escape = ch
            return
        if ch == '"':
            self.in_string = False
            if self.key is not None:
                self.last_key, self.key = "".join(self.key), None
            elif self.emitting:
                self.emitting, self.done = False, True
                if self.high is not None:
                    out.append("\ufffd")
                    self.high = None
            return
        self._decoded(ch, out)

    def _decoded(self, ch: str, out: list[str]) -> None:
        if self.key is not None:
            self.key.append(ch)
            return
        if not self.emitting:
            return
        code = ord(ch)
        if self.high is not None:
            high, self.high = self.high, None
            if 0xDC00 <= code <= 0xDFFF:
                out.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
                return
            out.append("\ufffd")
        if 0xD800 <= code <= 0xDBFF:
            self.high = code  # wait for the low half (it may come in the next piece)
            return
        out.append("\ufffd" if 0xDC00 <= code <= 0xDFFF else ch)
