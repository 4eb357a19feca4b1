"""Every reason code the code can answer with is registered in stage0/reasons.py, and so
documented in docs/errors.md (generated from it), so a user who meets one can look it up; the
API answers each with the status registered for it."""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from helpers import REPO

from stage0 import reasons
from stage0.api.openapi import ERRORS

CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")  # the shape of a code: FOO_BAR
WORD = re.compile(r"[A-Z][A-Z0-9_]*")
PREFIXED = re.compile(r"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*): ")  # "CODE: message" (triggers)
#: Calls whose code argument may also be a single word (NOT_FOUND has a `_`, INTERNAL not).
RAISERS = {"LoglineError": 0, "BootRefused": 0, "FsRefused": 0, "_LeftAt": 0, "of": 0,
           "ApiError": 1, "error_response": 2}
#: Literals of a code's shape that are not reason codes.
NOT_CODES = {
    "PENDING_APPROVAL": "a gate outcome (ALLOW, DENY, PENDING_APPROVAL), not a reason",
    "KERNEL_ID": "a constant a kernel's source declares", "POLICY_ID": "likewise",
    "ON_ENTITY_TYPES": "likewise", "SWEEP_ENTITY_TYPES": "likewise", "TIMEOUT_MS": "likewise",
    "PG_VERSION": "a file of a PostgreSQL data directory",
    "BENCH_PEER_CONNINFO": "an environment variable of tools/bench_pipeline.py",
}
NOT_CODE_PREFIXES = ("LOGLINE_", "RLIMIT_", "SC_")  # environment variables, os constants
#: Registered codes no literal in the source spells out, and why.
NOT_LITERAL = {"HTTP_nnn": "built from the status: f'HTTP_{status}' (CLI, agent, console)"}


def _code_like(text: str) -> str | None:
    if CODE.fullmatch(text):
        return text
    prefixed = PREFIXED.match(text)
    if prefixed is None:
        return None
    # "UNREADABLE: ..." is a code; "JSON: the function's input" (a help text) is not: a
    # prefix of one word counts when it is registered.
    code = prefixed.group(1)
    return code if "_" in code or code in reasons.REASONS else None


def _python_codes(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            code = _code_like(node.value)
            if code:
                yield code, node.lineno
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            at = RAISERS.get(name or "")
            if at is not None and len(node.args) > at:
                arg = node.args[at]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value, arg.lineno
        elif isinstance(node, ast.Dict):  # {"code": "X"}: kernels, sandbox results
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code" and \
                        isinstance(value, ast.Constant) and isinstance(value.value, str) \
                        and WORD.fullmatch(value.value):  # not a span's "code" (source)
                    yield value.value, value.lineno


def _text_codes(path: Path, patterns: list[re.Pattern[str]]) -> Iterator[tuple[str, int]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for pattern in patterns:
            for code in pattern.findall(line):
                yield code, number


SQL = [re.compile(r"'([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:'|: )")]  # 'CODE' and RAISE 'CODE: ..'
JS = [re.compile(r"ApiError\(\s*\d+,\s*'([A-Z][A-Z0-9_]*)'"),
      re.compile(r"'([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)'")]


def raised() -> dict[str, list[str]]:
    """Every code the source can raise or write -> where (path:line)."""
    found: dict[str, list[str]] = {}
    registry = REPO / "stage0" / "reasons.py"  # names them all: it is not where they arise
    sources = [(p, _python_codes(p)) for top in ("stage0", "kernels", "tools")
               for p in sorted((REPO / top).rglob("*.py")) if p != registry]
    sources += [(p, _text_codes(p, SQL)) for p in sorted(REPO.glob("schema/*.sql"))]
    sources += [(p, _text_codes(p, SQL)) for p in sorted((REPO / "stage0").rglob("*.sql"))]
    sources += [(p, _text_codes(p, JS)) for p in sorted((REPO / "stage0").rglob("*.js"))]
    for path, codes in sources:
        for code, line in codes:
            if code in NOT_CODES or code.startswith(NOT_CODE_PREFIXES):
                continue
            found.setdefault(code, []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def test_the_scan_finds_codes_of_every_origin():
    found = raised()
    assert {"NOT_INITIALISED", "QUOTA_EXCEEDED", "QUOTA_INVALID", "NEW_CODE_INVALID",
            "REQUESTER_REQUIRED", "BAD_ID"} <= set(found)
    assert "stage0/api/app.py" in found["INTERNAL"][0]  # error_response(request, 500, ...)
    assert any(w.startswith("schema/") for w in found["LEDGER_APPEND_ONLY"])  # a trigger
    assert any(w.startswith("kernels/") for w in found["RUN_CODE_FAILED"])  # {"code": ...}
    assert any(".js:" in w for w in found["NETWORK"])  # the console
    assert any("audit.py" in w for w in found["UNREADABLE"])  # f"UNREADABLE: {exc}"


def test_every_code_raised_is_registered():
    missing = [f"{where}: {code}" for code, wheres in sorted(raised().items())
               for where in wheres if code not in reasons.REASONS]
    assert missing == [], "register these in stage0/reasons.py (or, if one is not a reason " \
        "code, in NOT_CODES here):\n" + "\n".join(missing)


def test_every_registered_code_is_raised_somewhere():
    unused = sorted(set(reasons.REASONS) - set(raised()) - set(NOT_LITERAL))
    assert unused == [], f"registered in stage0/reasons.py but raised nowhere: {unused}"
    assert set(NOT_LITERAL) <= set(reasons.REASONS)


def test_the_registry_is_one_row_per_code_with_a_one_line_meaning():
    codes = [r.code for area in reasons.AREAS for r in area.reasons]
    assert len(codes) == len(set(codes)), "a code is registered twice"
    assert len({a.name for a in reasons.AREAS}) == len(reasons.AREAS)
    for r in reasons.REASONS.values():
        assert r.http is None or 400 <= r.http <= 599, r
        assert r.meaning and "\n" not in r.meaning + r.remedy, r
        assert "|" not in r.meaning + r.remedy, f"{r.code}: a | breaks the Markdown table"
        assert not r.meaning.endswith(".") and not r.remedy.endswith("."), r


def test_docs_errors_md_is_what_the_generator_makes():
    spec = importlib.util.spec_from_file_location("gen_errors_doc",
                                                  REPO / "tools" / "gen_errors_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "errors.md").read_text(encoding="utf-8") == module.render(), \
        "docs/errors.md is stale: run python tools/gen_errors_doc.py"


def _literal_statuses() -> Iterator[tuple[str, int, str]]:
    """(where, status, code) of every call that still spells a status next to its code."""
    for path in sorted((REPO / "stage0").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            at = {"ApiError": 0, "error_response": 1}.get(name or "")
            if at is None or len(node.args) < at + 2:
                continue
            status, code = node.args[at], node.args[at + 1]
            if isinstance(status, ast.Constant) and isinstance(code, ast.Constant) and \
                    isinstance(code.value, str):
                yield f"{path.relative_to(REPO)}:{node.lineno}", status.value, code.value


def test_statuses_written_next_to_a_code_are_the_registered_ones():
    literals = list(_literal_statuses())
    assert any(code == "INTERNAL" for _, _, code in literals)  # the scan sees them
    wrong = [f"{where}: {code} {status} (registered: {reasons.http_status(code)})"
             for where, status, code in literals if reasons.http_status(code) != status]
    assert wrong == [], "\n".join(wrong)


def _registered_in(text: str) -> set[str]:
    found = {c for c in reasons.REASONS if re.search(rf"(?<![A-Z0-9_]){c}(?![A-Z0-9_])", text)}
    if "SPAN_*" in text:
        found |= {c for c in reasons.REASONS if c.startswith("SPAN_")}
    return found


def _api_md_table() -> dict[int, str]:
    rows = {}
    for line in (REPO / "docs" / "api.md").read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| (\d{3}) \| (.*) \|$", line)
        if row:
            rows[int(row.group(1))] = row.group(2)
    return rows


def test_openapi_and_docs_api_name_codes_with_their_registered_status():
    """The OpenAPI document's error descriptions and docs/api.md's table of statuses are
    written by hand: the codes they name must be answered with the status they say."""
    claims = [(int(status), desc, "openapi") for status, desc in ERRORS.items()]
    claims += [(status, text, "docs/api.md") for status, text in _api_md_table().items()]
    assert len(claims) > len(ERRORS) + 10
    wrong = [f"{where}: {code} under {status}, registered {reasons.http_status(code)}"
             for status, text, where in claims for code in sorted(_registered_in(text))
             if reasons.http_status(code) != status]
    assert wrong == [], "\n".join(wrong)


def test_docs_api_lists_every_code_answered_other_than_422():
    table = _api_md_table()
    missing = sorted(f"{r.http} {r.code}" for r in reasons.REASONS.values()
                     if r.http not in (None, reasons.DEFAULT_HTTP)
                     and r.code not in _registered_in(table.get(r.http, "")))
    assert missing == [], f"add to the table of statuses in docs/api.md: {missing}"
