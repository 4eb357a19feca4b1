"""The local operator's API key, kept in $LOGLINE_HOME/operator.apikey (mode 0600) so that
`logline up` prints the same working key on every start. It is the only key with the
`operator` role (boot kernels over HTTP, Prometheus /metrics): see apikeys.OPERATOR_ROLE."""

from __future__ import annotations

import os

from stage0.config import Home
from stage0.gov import apikeys
from stage0.keys import id_secret, operator_key
from stage0.ledger.db import Database

USER, TENANT = apikeys.OPERATOR_USER, apikeys.OPERATOR_TENANT


def operator_token(home: Home, database: Database) -> str:
    path = home.path / "operator.apikey"
    key = operator_key(home)
    secret = id_secret(home, key)
    with database.connect("kernel") as conn:
        if path.exists():
            token = path.read_text().strip()
            principal = apikeys.authenticate(conn, token, secret)
            if principal is not None and apikeys.OPERATOR_ROLE in principal.roles:
                return token
            if principal is not None:  # made before the operator role: replaced, not kept
                apikeys.revoke(conn, key, principal.key_id, secret)
        token, _ = apikeys.issue_operator(conn, key, secret)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
