"""The local operator's API key, kept in $LOGLINE_HOME/operator.apikey (mode 0600) so that
`logline up` prints the same working key on every start."""

from __future__ import annotations

import os

from . import apikeys
from .config import Home
from .db import Database
from .keys import id_secret, operator_key

USER, TENANT = "operator", "default"


def operator_token(home: Home, database: Database) -> str:
    path = home.path / "operator.apikey"
    key = operator_key(home)
    secret = id_secret(home, key)
    with database.connect("kernel") as conn:
        if path.exists():
            token = path.read_text().strip()
            if apikeys.authenticate(conn, token, secret) is not None:
                return token
        token, _ = apikeys.create(conn, key, USER, TENANT, ("admin",), secret)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
