"""Schemathesis against a real `logline serve`: every operation in /openapi.json, called with
generated (valid and invalid) input and a valid API key, must never answer 5xx and must
answer with a documented status, content type and body shape."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import schemathesis
from helpers.api import Api, start_api
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stage0 import keys
from stage0.gov import apikeys

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]

KEYS = 20
#: One test calls every operation (25 examples each): on a machine busy with the rest of the
#: suite it takes past the default 120 s, which is there to catch a hang.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def fuzz_api(server, template, tmp_path_factory) -> Iterator[Api]:
    yield from start_api(server, template, tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_api: Api):
    return schemathesis.openapi.from_url(f"{fuzz_api.url}/openapi.json")


@pytest.fixture(scope="module")
def fuzz_tokens(fuzz_api: Api) -> Iterator[str]:
    """Calls take turns over many admin keys so the rate limits (429 is documented, and
    tested in test_api.py) do not hide the handlers from the fuzzer. One key comes from the
    real CLI; the others straight from the library, which is faster."""
    tokens = [fuzz_api.key("fuzzer", "fuzz", "admin").token]
    with fuzz_api.kernel() as conn:
        tokens += [apikeys.create(conn, keys.operator_key(fuzz_api.home), f"fuzzer{i}", "fuzz",
                                  ("admin",))[0] for i in range(KEYS - 1)]
    return itertools.cycle(tokens)


# The stream never ends by design (schemathesis would read it until its timeout); it has its
# own tests in test_api.py.
schema = schemathesis.pytest.from_fixture("fuzz_schema").exclude(path="/api/timeline/stream")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_response_matches_the_schema(case, fuzz_api: Api, fuzz_tokens):
    case.call_and_validate(base_url=fuzz_api.url, checks=CHECKS, timeout=30,
                           headers={"Authorization": f"Bearer {next(fuzz_tokens)}"})
