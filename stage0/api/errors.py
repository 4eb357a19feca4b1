"""One error body for every refusal: {"error": {"code", "message", "request_id"}}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stage0.errors import LoglineError

#: Ledger reason codes -> HTTP status (anything else from the ledger is a 422).
STATUS = {
    "LEDGER_FORBIDDEN": 403, "LEDGER_OWNERSHIP_CHANGE": 403, "TENANT_MISMATCH": 403,
    "KEY_UNTRUSTED": 403, "LEDGER_SEQ_CONFLICT": 409, "LEDGER_PREV_HASH_MISMATCH": 409,
    "LEDGER_SEQ_GAP": 409, "LEDGER_DUPLICATE": 409, "LEDGER_STALE_SNAPSHOT": 409,
    "FUNCTION_NOT_FOUND": 404,
    "NOT_FOUND": 404, "BOOT_NOT_ALLOWED": 403, "DB_UNAVAILABLE": 503, "BOOT_FAILED": 500,
    "CONTRACT_NOT_FOUND": 404, "CONTRACT_EXISTS": 409, "CONTRACT_CHANGED": 409,
    "CONTRACT_UNTRUSTED": 403, "JOB_NOT_CLAIMED": 409, "JOB_RESULT_CONFLICT": 409,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, audited: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.audited = audited  # already in the ledger (a gate_decision): not audited twice

    @classmethod
    def from_ledger(cls, exc: LoglineError) -> ApiError:
        message = f"{exc.where}: {exc.message}" if exc.where else exc.message
        return cls(STATUS.get(exc.code, 422), exc.code, message)


def error_response(request: Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    headers = {**(headers or {}), **({"X-Request-ID": request_id} if request_id else {})}
    return JSONResponse(body, status_code=status, headers=headers)
