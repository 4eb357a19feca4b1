"""Build ROW/kernels/*.ndjson and ROW/policies/*.ndjson from the Python sources in kernels/.

A kernel module declares KERNEL_ID and NAME; a policy module (kernels/policies/) declares
POLICY_ID, NAME and optionally ON_ENTITY_TYPES, SWEEP_ENTITY_TYPES, SCOPE, TIMEOUT_MS. The
module's source text is the span's `code`, its docstring's first line the description. The
rows are unsigned: the operator signs them at seed time. `python tools/build_rows.py`
regenerates them and a test fails when they drift from the sources.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from stage0.config import PROJECT_ROOT
from stage0.errors import LoglineError

KERNELS = PROJECT_ROOT / "kernels"
ROW = PROJECT_ROOT / "ROW"


def _constants(tree: ast.Module) -> dict[str, Any]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def _common(path: Path) -> tuple[str, dict[str, Any], str]:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    constants = _constants(tree)
    if "NAME" not in constants:
        raise LoglineError("KERNEL_SOURCE_INVALID", "declares no NAME", str(path))
    return source, constants, doc[0] if doc else ""


def kernel_row(path: Path) -> dict[str, Any]:
    source, c, description = _common(path)
    return {
        "id": c["KERNEL_ID"], "entity_type": "function", "who": "logline", "did": "defined",
        "this": c["NAME"], "name": c["NAME"], "description": description, "code": source,
        "language": "python", "runtime": "stage0-restricted", "owner_id": "system",
        "tenant_id": "system", "visibility": "public", "status": "active",
        "metadata": {"kernel": True, "source": str(path.relative_to(PROJECT_ROOT))},
    }


def policy_row(path: Path) -> dict[str, Any]:
    source, c, description = _common(path)
    metadata = {"source": str(path.relative_to(PROJECT_ROOT)),
                "on_entity_types": c.get("ON_ENTITY_TYPES"), "scope": c.get("SCOPE", "tenant"),
                "sweep_entity_types": c.get("SWEEP_ENTITY_TYPES"),
                "timeout_ms": c.get("TIMEOUT_MS", 3000)}
    return {
        "id": c["POLICY_ID"], "entity_type": "policy", "who": "logline", "did": "defined",
        "this": c["NAME"], "name": c["NAME"], "description": description, "code": source,
        "language": "python", "runtime": "sandbox", "owner_id": "system", "tenant_id": "system",
        "visibility": "public", "status": "active", "metadata": metadata,
    }


def render(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def build() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {}
    for path in sorted(KERNELS.glob("*.py")):
        if path.name != "__init__.py":
            out[ROW / "kernels" / f"{path.stem}.ndjson"] = render(kernel_row(path))
    for path in sorted((KERNELS / "policies").glob("*.py")):
        if path.name != "__init__.py":
            out[ROW / "policies" / f"{path.stem}.ndjson"] = render(policy_row(path))
    return out


def write() -> list[Path]:
    written = []
    for path, text in build().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
