"""One error body for every refusal: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stage0 import reasons
from stage0.errors import LoglineError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, audited: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.audited = audited  # already in the ledger (a gate_decision): not audited twice

    @classmethod
    def of(cls, code: str, message: str, headers: dict[str, str] | None = None) -> ApiError:
        """The refusal `code`, with the HTTP status stage0/reasons.py gives it."""
        status = reasons.http_status(code)
        if status is None:
            raise ValueError(f"{code} has no HTTP status in stage0/reasons.py")
        return cls(status, code, message, headers)

    @classmethod
    def from_ledger(cls, exc: LoglineError) -> ApiError:
        """A refusal from below the API, with its registered status (422 if none)."""
        message = f"{exc.where}: {exc.message}" if exc.where else exc.message
        return cls(reasons.http_status(exc.code) or reasons.DEFAULT_HTTP, exc.code, message)


def error_response(request: Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    headers = {**(headers or {}), **({"X-Request-ID": request_id} if request_id else {})}
    return JSONResponse(body, status_code=status, headers=headers)
