"""The prompt build's golden vectors (tests/vectors/prompts.json, issue 14): the file is what
its generator makes, and the build kernel's own compiler gives each vector's compiled text,
compiled_hash and refusals (the JavaScript verifier checks the same file independently)."""

from __future__ import annotations

import importlib.util
import json

import blake3
import pytest
from helpers import REPO

from stage0.spans import kinds

VECTORS = json.loads((REPO / "tests" / "vectors" / "prompts.json").read_text())["vectors"]


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vectors_file_is_what_the_generator_makes():
    make = _module(REPO / "tools" / "make_prompt_vectors.py", "make_prompt_vectors")
    assert (REPO / "tests" / "vectors" / "prompts.json").read_text() == make.render(), \
        "tests/vectors/prompts.json is stale: run python tools/make_prompt_vectors.py"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_the_build_kernel_reproduces_each_vector(vector):
    build = _module(REPO / "kernels" / "prompt_build.py", "prompt_build").compile_blocks
    compiled, error = build(vector["blocks"], vector["vars"])
    if "error" in vector:
        assert compiled is None
        assert {k: error["error"][k] for k in ("code", "where")} == vector["error"]
    else:
        assert error is None and compiled == vector["compiled"]
        assert blake3.blake3(compiled.encode()).hexdigest() == vector["compiled_hash"]


def test_the_vectors_cover_the_priorities_and_strictness():
    names = {v["name"] for v in VECTORS}
    assert {"four-layers", "ties-keep-order", "missing-variable", "values-not-rescanned"} <= names
    four = next(v for v in VECTORS if v["name"] == "four-layers")
    assert [line.split(":")[0] for line in four["compiled"].split("\n\n")] == [
        "Doctrine", "Product", "App", "Task"]


def test_records_of_prompt_kernels_are_platform_kinds_and_never_emitted_by_policies():
    records = {"prompt_build", "prompt_run", "prompt_eval_result", "prompt_variant_selection"}
    assert records <= kinds.PLATFORM_KINDS and records <= kinds.NEVER_EMITTED
    assert set(kinds.PROMPT_KINDS) == records | {"prompt_block", "prompt_variant"}
    assert not {"prompt_block", "prompt_variant"} & kinds.PLATFORM_KINDS
