"""The one error type users see: a stable reason code, a message, and where it happened."""

from __future__ import annotations


class LoglineError(Exception):
    """A refusal with a stable reason code, registered in stage0/reasons.py (docs/errors.md
    is generated from it).

    `where` names the place: a file:line, a field path, a span id.
    """

    def __init__(self, code: str, message: str, where: str | None = None) -> None:
        self.code = code
        self.message = message
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.code}: {self.message}"

    def at(self, where: str) -> LoglineError:
        """The same error, located more precisely (outer location first)."""
        inner = f"{where}: {self.where}" if self.where else where
        return LoglineError(self.code, self.message, inner)

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "where": self.where}
