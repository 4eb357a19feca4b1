"""Spans written by `logline sign` (and stored by `logline seed`) verify under an independent
RFC 8785 + BLAKE3 + Ed25519 implementation in another language: tools/verify-js (Node.js)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO
from helpers.run import locked
from nacl.signing import SigningKey

from stage0.spans.canonical import MAX_SAFE_INTEGER, normalise
from stage0.spans.proofs import check_proofs

VERIFY_JS = REPO / "tools" / "verify-js"
VECTORS = REPO / "tests" / "vectors" / "vectors.json"
PROMPT_VECTORS = REPO / "tests" / "vectors" / "prompts.json"
LINE = re.compile(r"^(ok|FAIL) +(\S+):(\d+) (.*)$")


def npm_install(directory: Path, env: dict[str, str] | None = None) -> str | None:
    """Install the verifier's locked dependencies (npm ci) unless they are there; the reason
    to skip when that cannot be done (no node/npm, no registry within NPM_WAIT_S), else None."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not on PATH: the JavaScript verifier cannot run"
    if (directory / "node_modules").is_dir():
        return None
    try:
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--fetch-retries=0",
                               "--fetch-timeout=20000"], cwd=directory, env=env,
                              capture_output=True, text=True, timeout=NPM_WAIT_S)
    except subprocess.TimeoutExpired:
        return f"npm ci in {directory} took over {NPM_WAIT_S}s (no registry access?)"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"npm ci in {directory} failed (no registry access?): {' / '.join(tail)}"
    return None


NPM_WAIT_S = 90


@pytest.fixture(scope="session")
def node(run_dir: Path) -> Any:
    """Run verify.mjs; installs its locked dependencies (npm ci) once if they are missing,
    and skips (never errors) when node, npm or the registry is not there. One process of the
    run installs them; the others wait for it (xdist)."""
    with locked(run_dir / "npm.lock"):
        reason = npm_install(VERIFY_JS)
    if reason:
        pytest.skip(reason)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["node", str(VERIFY_JS / "verify.mjs"), *args], input=stdin,
                              capture_output=True, text=True, timeout=120)

    return run


def outcomes(stdout: str) -> dict[int, str]:
    """Line number -> "ok" or the failure reason code, from verify.mjs output."""
    out = {}
    for text in stdout.split("\n")[:-1]:
        m = LINE.match(text)
        assert m, f"unexpected output line: {text!r}"
        out[int(m[3])] = "ok" if m[1] == "ok" else re.search(r" ([A-Z_]+): ", text)[1]
    return out


# -- deterministic varied rows ----------------------------------------------------------------

SPECIAL = ["\x01", "\x08", "\x1f", "\x7f", "\x80", '"', "\\", "/", "\u2028", "\u2029", "\ud7ff",
           "\ue000", "\uff61", "\ufeff", "\ufffd", "\uffff", "\U00010000", "\U0001F600",
           "\U0010FFFF", "e\u0301", "\u200d", "\r\n", "\t"]


def _char(r: random.Random) -> str:
    pick = r.random()
    if pick < 0.35:
        return chr(r.randint(0x20, 0x7E))
    if pick < 0.55:
        return r.choice(SPECIAL)
    if pick < 0.8:
        c = r.randint(0x80, 0xFFFF)
        return chr(c) if not 0xD800 <= c <= 0xDFFF else "\u00e9"
    return chr(r.randint(0x10000, 0x10FFFF))


def _text(r: random.Random, most: int = 10) -> str:
    return "".join(_char(r) for _ in range(r.randint(0, most)))


def _float(r: random.Random) -> float:
    pick = r.random()
    if pick < 0.4:
        while True:  # any finite double, subnormals included
            value = struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(value):
                return value
    if pick < 0.7:
        return r.choice([0.0, -0.0, 1.0, 1e21, 1e-7, 5e-324, 0.1 + 0.2, 123.456, 1e16, 1e20,
                         9.999999999999999e20, 1e-6, 1.5e-7, 2.2250738585072014e-308,
                         1.7976931348623157e308, 9007199254740992.0, 4.35, 0.000001234])
    return r.uniform(-1e6, 1e6) * 10 ** r.randint(-30, 30)


def _json(r: random.Random, depth: int = 0) -> Any:
    pick = r.random() if depth < 4 else r.random() * 0.6
    if pick < 0.1:
        return r.choice([None, True, False])
    if pick < 0.25:
        return r.choice([r.randint(-1000, 1000), r.randint(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
                         MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])
    if pick < 0.4:
        return _float(r)
    if pick < 0.6:
        return _text(r)
    if pick < 0.8:
        return [_json(r, depth + 1) for _ in range(r.randint(0, 4))]
    return {_text(r, 6): _json(r, depth + 1) for _ in range(r.randint(0, 4))}


FIRST = datetime(1971, 1, 1, tzinfo=UTC)
SPAN_US = (datetime(9000, 1, 1, tzinfo=UTC) - FIRST) // timedelta(microseconds=1)


def random_rows(n: int, seed: int = 8785) -> list[dict[str, Any]]:
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        offset = timedelta(minutes=r.randint(-14 * 60, 14 * 60))
        at = FIRST + timedelta(microseconds=r.randint(0, SPAN_US))
        row = {"id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
               "entity_type": "fuzz", "who": _text(r), "this": _text(r, 30),
               "at": at.astimezone(timezone(offset)).isoformat(),
               "owner_id": "o", "tenant_id": "t"}
        for field in ("input", "output", "error", "metadata", "content"):
            if r.random() < 0.6:
                row[field] = _json(r)
        for field in ("did", "name", "description", "code", "status", "trace_id"):
            if r.random() < 0.3:
                row[field] = _text(r, 40)
        if r.random() < 0.3:
            row["id"] = row["id"].upper()
        rows.append(row)
    return rows


def write_ndjson(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


# -- tests ------------------------------------------------------------------------------------

def test_node_verifies_spans_written_by_logline_sign(cli, node, tmp_path):
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    rows = [v["input"] for v in vectors] + random_rows(250)
    path = write_ndjson(tmp_path / "rows.ndjson", rows)
    cli("sign", str(path))
    signed = read_ndjson(path)
    assert len(signed) == len(rows)
    assert all(check_proofs(normalise(s)).ok for s in signed)  # Python agrees with itself

    proc = node(str(path))
    assert outcomes(proc.stdout) == {i: "ok" for i in range(1, len(rows) + 1)}, proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert f"{len(rows)} spans: {len(rows)} verified, 0 failed" in proc.stderr


def test_node_names_each_tampered_span(cli, node, tmp_path):
    rows = [{"id": f"abcdef0{n}-0000-4000-8000-00000000000{n}", "entity_type": "note", "who": "w",
             "this": f"caf\u00e9 {n} \U0001F600", "metadata": {"x": [0.5, {"\U0001F680": n}]}}
            for n in range(1, 7)]
    path = write_ndjson(tmp_path / "rows.ndjson", rows)
    cli("sign", str(path))
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    spans = [json.loads(line) for line in lines]
    spans[1]["this"] += "!"
    spans[2]["metadata"]["x"][0] = 0.25
    digest = bytes.fromhex(spans[3]["curr_hash"])
    spans[3]["signature"] = SigningKey(bytes(32)).sign(digest).signature.hex()
    spans[4]["id"] = spans[4]["id"].upper()
    lines = [json.dumps(s, ensure_ascii=False) for s in spans[:5]] + [lines[5][:-1]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    proc = node(str(path))
    assert proc.returncode == 1
    assert outcomes(proc.stdout) == {1: "ok", 2: "HASH_MISMATCH", 3: "HASH_MISMATCH",
                                     4: "SIGNATURE_INVALID", 5: "NOT_NORMALISED", 6: "BAD_JSON"}
    assert "6 spans: 1 verified, 5 failed" in proc.stderr


def test_node_verifies_spans_read_back_from_the_ledger(cli, node, tmp_path):
    """Signed rows seeded into PostgreSQL and listed by `logline spans --json` still verify
    in JavaScript: the database round trip loses nothing the hash covers."""
    path = write_ndjson(tmp_path / "rows.ndjson", random_rows(120, seed=3))
    cli("sign", str(path))
    cli("seed", str(path))
    listed = cli("spans", "--entity-type", "fuzz", "--limit", "1000", "--json").stdout
    assert len(listed.split("\n")[:-1]) == 120
    proc = node("-", stdin=listed)
    assert set(outcomes(proc.stdout).values()) == {"ok"}, proc.stdout
    assert proc.returncode == 0
    assert sorted(json.loads(line)["curr_hash"] for line in listed.split("\n")[:-1]) == \
        sorted(s["curr_hash"] for s in read_ndjson(path))


def test_node_reproduces_the_reference_vectors(node):
    proc = node("--vectors", str(VECTORS))
    names = [v["name"] for v in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]]
    assert proc.stdout.splitlines() == [f"ok   {name}" for name in names], proc.stdout
    assert proc.returncode == 0


def test_node_rejects_a_vector_file_whose_canonical_text_differs(node, tmp_path):
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    doc["vectors"][1]["canonical"] = doc["vectors"][1]["canonical"].replace('"seq":0', '"seq":1')
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    proc = node("--vectors", str(path))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1].startswith(f"FAIL {doc['vectors'][1]['name']} "
                                                  "canonical differs")


def test_node_reproduces_the_prompt_build_vectors(node):
    """The prompt build (issue 14) reimplemented in JavaScript from docs/prompts.md gives the
    same compiled text and compiled_hash, and the same refusals, as the kernel."""
    proc = node("--prompts", str(PROMPT_VECTORS))
    names = [v["name"] for v in json.loads(PROMPT_VECTORS.read_text())["vectors"]]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"ok   {name}" for name in names]


def test_node_rejects_a_prompt_vector_with_a_wrong_hash(node, tmp_path):
    doc = json.loads(PROMPT_VECTORS.read_text())
    doc["vectors"][0]["compiled_hash"] = "0" * 64
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(doc))
    proc = node("--prompts", str(path))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith(f"FAIL {doc['vectors'][0]['name']} "
                                                  "compiled_hash")


def test_no_registry_means_a_skip_reason_not_an_error(tmp_path):
    """With node and npm but no registry (here: a closed port), the JavaScript tests skip."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not on PATH")
    copy = tmp_path / "verify-js"
    copy.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(VERIFY_JS / name, copy / name)
    env = {**os.environ, "npm_config_registry": "http://127.0.0.1:9/",
           "npm_config_cache": str(tmp_path / "empty-cache"), "npm_config_offline": "false"}
    reason = npm_install(copy, env)
    assert reason is not None and "npm ci" in reason, reason
