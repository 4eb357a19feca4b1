"""A built package (a wheel: `pip install .`) works away from the checkout: it carries the
migrations and seed rows, and `logline init` run from it migrates and seeds a database that
then verifies. (An editable install reads schema/ and ROW/ from the checkout itself.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO
from helpers.cli import DB_ENV, Ran
from helpers.cli import logline as run_logline

from stage0 import config
from stage0.ledger import db


def test_a_checkout_reads_its_own_schema_and_rows() -> None:
    assert config.from_checkout()
    assert config.schema_dir() == REPO / "schema"
    assert config.row_dir() == REPO / "ROW"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools builds in the source tree, and a build/ left there from
    # an earlier build could carry files the checkout no longer has into the wheel.
    source = tmp_path_factory.mktemp("source") / "logline"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", ".logline", "node_modules", "__pycache__",
        ".pytest_cache", ".hypothesis", ".ruff_cache"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [built] = out.glob("logline-*.whl")
    return built


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_carries_every_migration_and_seed_row(wheel: Path) -> None:
    prefix = "stage0/_bundled/"
    with zipfile.ZipFile(wheel) as z:
        bundled = {n.removeprefix(prefix): z.read(n) for n in z.namelist()
                   if n.startswith(prefix)}
    expected = {str(p.relative_to(REPO)): p.read_bytes()
                for d in ("schema", "ROW") for p in sorted((REPO / d).rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(bundled) == sorted(expected)
    assert bundled == expected


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_init_from_the_installed_package_migrates_seeds_and_verifies(
        wheel: Path, tmp_path: Path, empty_database: db.Database,
        one_migration_at_a_time: None) -> None:
    site = tmp_path / "site"  # the package as pip installs it, with no checkout around it
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env.update(PYTHONPATH=str(site), LOGLINE_HOME=str(work / ".logline"),
               LOGLINE_DATABASE_URL=empty_database.admin_url)

    def logline(*args: str) -> Ran:  # the package's own `python -m stage0.cli`, not ours
        return run_logline(*args, env=env, cwd=work, timeout=240, own_process=True)

    where = subprocess.run([sys.executable, "-c", "import stage0.config as c; "
                            "print(c.from_checkout(), c.schema_dir())"],
                           env=env, cwd=work, capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == ["False", str(site / "stage0" / "_bundled" / "schema")], \
        where.stderr
    init = logline("init")
    assert init.returncode == 0, init.stdout + init.stderr
    migrations = sorted(p.stem for p in (REPO / "schema").glob("[0-9]*.sql"))
    assert f"migrate   {', '.join(migrations)}" in init.stdout
    rows = [p for p in (REPO / "ROW").rglob("*") if p.suffix in (".ndjson", ".yaml")]
    assert f"from {len(rows)} file(s)" in init.stdout
    verified = logline("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ok: every hash, signature, key and chain checks out" in verified.stdout
    bench = logline("bench", "ingest")
    assert bench.returncode != 0 and "BENCH_NEEDS_CHECKOUT" in bench.stdout + bench.stderr
