"""Where LogLine keeps its state, and the local settings it pins.

$LOGLINE_HOME (default ./.logline) holds the embedded database (pgdata/), the operator key
(keys/operator.key, mode 0600) and config.json, which pins the root public key: the key the
manifest must be signed with. Nothing in the database can change which key is the root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from stage0.errors import LoglineError

#: The repository root, when the package runs from a checkout (editable install or
#: PYTHONPATH): schema/, ROW/, kernels/ and tools/ live there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Where a built package (a wheel: `pip install .`) carries copies of schema/ and ROW/
#: (setup.py puts them there; a checkout has none).
BUNDLED = Path(__file__).resolve().parent / "_bundled"


def from_checkout() -> bool:
    """True when this package runs from a LogLine checkout rather than an installed copy."""
    return (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "schema").is_dir()


def data_dir(name: str) -> Path:
    """schema/ or ROW/: the checkout's own (so edits show at once), else the installed copy."""
    return PROJECT_ROOT / name if from_checkout() else BUNDLED / name


@dataclass(frozen=True)
class Home:
    path: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("LOGLINE_HOME", ".logline")).resolve())

    @property
    def pgdata(self) -> Path:
        return self.path / "pgdata"

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    @property
    def operator_key(self) -> Path:
        return self.keys / "operator.key"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def read_config(self) -> dict:
        try:
            return json.loads(self.config_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise LoglineError("CONFIG_INVALID", f"not valid JSON: {exc}",
                               str(self.config_file)) from None

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.config_file)

    def root_public_key(self) -> str:
        key = self.read_config().get("root_public_key")
        if not key:
            raise LoglineError("ROOT_KEY_NOT_PINNED", "no root public key is pinned in "
                               f"{self.config_file}; run `logline keys gen` or `logline init`")
        return key


def schema_dir() -> Path:
    return Path(os.environ.get("LOGLINE_SCHEMA_DIR", data_dir("schema")))


def row_dir() -> Path:
    return data_dir("ROW")
