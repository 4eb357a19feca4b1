"""An author's own function or policy: the files `logline new` writes, and `logline try`.

`write()` keeps two files side by side: NAME.py, the code (a template the first time; yours
to edit, never overwritten), and NAME.ndjson, the one row to sign and seed, built from it
(the code inline, the docstring's first line as the description, and for a policy the kinds
it sees from ON_ENTITY_TYPES and its time limit from TIMEOUT_MS). Running it again after an
edit rewrites NAME.ndjson as the next version of the same span: chained to the version the
file held when that one was signed (seq + 1, prev_hash), or in place while it is unsigned
(the operator's seed then appends the next version itself).

`try_code()` runs the code's main() in the real sandbox, without a database, and for a
policy checks its actions the way the policy agent would take them.
"""

from __future__ import annotations

import ast
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stage0.errors import LoglineError
from stage0.ledger import rows
from stage0.ledger.kernel_rows import _constants
from stage0.spans import kinds
from stage0.spans.canonical import FIELDS, normalise

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
KINDS = ("function", "policy")
CHAIN_FIELDS = ("at", "seq", "prev_hash", "curr_hash", "signature", "public_key")
#: Everything a version's content is (what decides "changed or not").
CONTENT = tuple(f for f in FIELDS if f not in CHAIN_FIELDS)
POLICY_TIMEOUT_MS = 3000

FUNCTION_TEMPLATE = '''"""{name}: say hello (this first line is the function's description).

main(input) gets the request's input (any JSON value; None when the request has none) and
returns a JSON value: the execution's output. It runs in LogLine's sandbox: no files, no
network, no classes; it may import math, json, re, datetime, itertools, functools,
collections, statistics, string, decimal, hashlib and random. print() output is kept in the
execution's metadata.stdout.
"""


def main(input):
    name = (input or {{}}).get("name", "world")
    return {{"greeting": f"hello, {{name}}"}}
'''

POLICY_TEMPLATE = '''"""{name}: open an alert when a run fails (this first line is its description).

main(span) is called with each new span of the policy's tenant whose entity_type is in
ON_ENTITY_TYPES, and returns a list of actions (an empty list: nothing to do):
  {{"emit_span": {{"entity_type": "alert", "this": "...", "status": "open", ...}}}}
      a span in the same tenant, owned by "policy:{name}", its parent the span seen
  {{"run": "run_code", "span_id": "<function id>", "input": {{...}}}}
      schedule one of the tenant's functions
  {{"count": {{"name": "failures", "labels": {{"code": "..."}}}}}}
      +1 on a rollup span per name and labels
It runs in the sandbox like a function, within TIMEOUT_MS per batch of spans.
"""

ON_ENTITY_TYPES = {on}
TIMEOUT_MS = 3000


def main(span):
    if span.get("status") != "error":
        return []
    error = span.get("error") or {{}}
    return [{{"emit_span": {{
        "entity_type": "alert", "this": "a run failed", "did": "raised", "status": "open",
        "metadata": {{"function_id": span.get("parent_id"), "code": error.get("code")}},
    }}}}]
'''


@dataclass(frozen=True)
class Written:
    kind: str
    code_path: Path
    row_path: Path
    row: dict[str, Any]
    wrote_code: bool  # the template was written (first run)
    changed: bool  # the row file holds a new version (or new content for the same one)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise LoglineError("NEW_BAD_NAME", "a name is a lowercase letter then up to 63 "
                           "lowercase letters, digits or '_' (it names the files and the span)",
                           name)
    return name


def template(kind: str, name: str, on: list[str] | None = None) -> str:
    if kind == "function":
        return FUNCTION_TEMPLATE.format(name=name)
    return POLICY_TEMPLATE.format(name=name, on=repr(list(on or ["execution"])))


def check_code(code: str, where: str) -> tuple[str, dict[str, Any]]:
    """(description, module constants) of code that parses and defines main(); else
    NEW_CODE_INVALID naming the line. The sandbox's own rules are checked by `logline try`."""
    try:
        tree = ast.parse(code, filename=where)
    except SyntaxError as exc:
        raise LoglineError("NEW_CODE_INVALID", f"line {exc.lineno}: {exc.msg}", where) from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
        raise LoglineError("NEW_CODE_INVALID", "defines no main(): a function's main(input) or "
                           "a policy's main(span) is what runs", where)
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    return (doc[0] if doc else ""), _constants(tree)


def _previous(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    found = rows.read(path)
    if len(found) != 1:
        raise LoglineError("NEW_NOT_ONE_ROW", f"holds {len(found)} rows; `logline new` keeps "
                           "one span's row per file", str(path))
    return found[0].data


def _settled(given: str | None, previous: dict[str, Any] | None, field: str,
             default: str, path: Path) -> str:
    """A field a span keeps for life (tenant, owner, kind): the file's, unless given."""
    kept = (previous or {}).get(field)
    if given is not None and kept is not None and given != kept:
        raise LoglineError("LEDGER_OWNERSHIP_CHANGE", f"holds a span with {field} {kept!r}; its "
                           f"versions cannot change that (choose another NAME)", str(path))
    return given if given is not None else kept if kept is not None else default


def write(kind: str, name: str, directory: Path, tenant: str | None = None,
          owner: str | None = None, visibility: str | None = None,
          code_path: Path | None = None, on: list[str] | None = None,
          defaults: tuple[str, str] = ("default", "operator")) -> Written:
    """Write (or bring up to date) NAME.ndjson from NAME.py (or `code_path`); see above."""
    check_name(name)
    if kind not in KINDS:
        raise LoglineError("NEW_BAD_NAME", f"makes a function or a policy, not {kind!r}", kind)
    for kind_name in on or []:
        kinds.check_kind(kind_name, "--on")
    directory.mkdir(parents=True, exist_ok=True)
    code_file = code_path or directory / f"{name}.py"
    wrote_code = False
    if not code_file.exists():
        if code_path is not None:
            raise LoglineError("ROW_NOT_FOUND", "no such code file", str(code_path))
        code_file.write_text(template(kind, name, on), encoding="utf-8")
        wrote_code = True
    code = code_file.read_text(encoding="utf-8")
    description, constants = check_code(code, str(code_file))
    row_path = directory / f"{name}.ndjson"
    previous = _previous(row_path)
    if previous is not None and previous.get("entity_type") != kind:
        raise LoglineError("LEDGER_OWNERSHIP_CHANGE", f"holds a {previous.get('entity_type')}, "
                           f"not a {kind}", str(row_path))
    row = {
        "id": (previous or {}).get("id") or str(uuid.uuid4()), "entity_type": kind,
        "who": _settled(owner, previous, "owner_id", defaults[1], row_path), "did": "defined",
        "this": name, "name": name, "description": description or None, "code": code,
        "language": "python",
        "owner_id": _settled(owner, previous, "owner_id", defaults[1], row_path),
        "tenant_id": _settled(tenant, previous, "tenant_id", defaults[0], row_path),
        "visibility": visibility or (previous or {}).get("visibility") or "tenant",
        "status": "active", "metadata": _metadata(kind, constants),
    }
    row = {k: v for k, v in row.items() if v is not None}
    row, changed = _versioned(row, previous)
    if changed:
        rows.write(row_path, [row])
    return Written(kind, code_file, row_path, row, wrote_code, changed)


def _metadata(kind: str, constants: dict[str, Any]) -> dict[str, Any] | None:
    if kind != "policy":
        return None
    on = constants.get("ON_ENTITY_TYPES")
    if on is not None and (not isinstance(on, list) or not all(isinstance(k, str) for k in on)):
        raise LoglineError("NEW_CODE_INVALID", "ON_ENTITY_TYPES must be a list of kinds",
                           "ON_ENTITY_TYPES")
    for kind_name in on or []:
        kinds.check_kind(kind_name, "ON_ENTITY_TYPES")
    timeout = constants.get("TIMEOUT_MS", POLICY_TIMEOUT_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise LoglineError("NEW_CODE_INVALID", "TIMEOUT_MS must be a positive whole number of "
                           "milliseconds", "TIMEOUT_MS")
    return {"on_entity_types": on, "scope": "tenant", "timeout_ms": timeout}


def _versioned(row: dict[str, Any], previous: dict[str, Any] | None
               ) -> tuple[dict[str, Any], bool]:
    """`row` as the version the file should hold now, and whether that differs from it."""
    if previous is None:
        return row, True
    before = normalise({"at": "2000-01-01T00:00:00Z", **previous})
    after = normalise({"at": "2000-01-01T00:00:00Z", **row})
    if all(before[f] == after[f] for f in CONTENT):
        return previous, False
    if previous.get("signature"):  # signed (and seeded, we trust): this is the next version
        return {**row, "seq": before["seq"] + 1, "prev_hash": before["curr_hash"]}, True
    # Unsigned: the same version with new content (keeping the chain fields it was given).
    return {**row, **{f: previous[f] for f in ("seq", "prev_hash") if f in previous}}, True


# --- trying code ----------------------------------------------------------------------------
def code_of(path: Path) -> tuple[str, str, dict[str, Any]]:
    """(kind, code, metadata) of a row file written by `logline new`, or of a .py file (a
    policy when it declares ON_ENTITY_TYPES)."""
    if path.suffix == ".py":
        try:
            code = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LoglineError("ROW_NOT_FOUND", exc.strerror or str(exc), str(path)) from None
        _, constants = check_code(code, str(path))
        kind = "policy" if "ON_ENTITY_TYPES" in constants else "function"
        return kind, code, _metadata(kind, constants) or {}
    row = _previous(rows.expand([path])[0])
    assert row is not None
    if row.get("entity_type") not in KINDS or not isinstance(row.get("code"), str):
        raise LoglineError("NEW_CODE_INVALID", "not a function or policy row with code",
                           str(path))
    return row["entity_type"], row["code"], row.get("metadata") or {}


def action_problems(actions: Any) -> list[str]:
    """What the policy agent would refuse among a policy's actions (empty: nothing)."""
    if not isinstance(actions, list):
        return [f"main() returned {type(actions).__name__}, not a list of actions"]
    problems = []
    for i, action in enumerate(actions):
        problem = _action_problem(action)
        if problem:
            problems.append(f"action {i}: {problem}")
    return problems


def _action_problem(action: Any) -> str | None:
    if not isinstance(action, dict):
        return "not an object"
    if action.get("run") == "run_code":
        return None if action.get("span_id") else "run_code needs a span_id (a function id)"
    if "count" in action:
        count = action["count"]
        return None if isinstance(count, dict) and count.get("name") else \
            "count needs {\"name\": ..., \"labels\": {...}}"
    if "emit_span" not in action:
        return "unknown action (emit_span, run or count)"
    spec = action["emit_span"]
    if not isinstance(spec, dict):
        return "emit_span must be an object (a span's fields)"
    kind = spec.get("entity_type")
    try:
        kinds.check_kind(kind)
    except LoglineError as exc:
        return f"emit_span: {exc.message}"
    if kind in kinds.PLATFORM_KINDS or kind in kinds.NEVER_EMITTED:
        return f"emit_span: {kind!r} is written by the platform only; a policy may not emit it"
    for field in ("owner_id", "tenant_id", "id", "seq", "signature", "public_key"):
        if field in spec:
            return f"emit_span may not set {field} (the agent sets it)"
    return None
