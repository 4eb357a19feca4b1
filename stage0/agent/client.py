"""A small JSON client for the LogLine API (standard library only), used by `logline agent`
and `logline approvals`. Refusals come back as LoglineError with the server's reason code;
a server that cannot be reached is API_UNREACHABLE (the caller decides whether to retry)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from stage0.errors import LoglineError


@dataclass(frozen=True)
class Client:
    url: str
    token: str
    timeout: float = 30.0

    def get(self, path: str, **query: Any) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        suffix = "?" + urllib.parse.urlencode(params) if params else ""
        return self._send("GET", path + suffix, None)

    def post(self, path: str, body: Any) -> Any:
        return self._send("POST", path, json.dumps(body).encode())

    def _send(self, method: str, path: str, data: bytes | None) -> Any:
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LoglineError("API_UNREACHABLE", f"{self.url}: {reason}") from None
        return json.loads(body or b"null")


def _refusal(exc: urllib.error.HTTPError) -> LoglineError:
    try:
        error = json.loads(exc.read())["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{exc.code}", exc.reason
    refusal = LoglineError(code, message)
    refusal.status = exc.code  # type: ignore[attr-defined]
    return refusal
