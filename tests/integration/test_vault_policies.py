"""A tenant's policy against the vault: it may watch its tenant's `secret` and `tenant_key`
spans go by, but it is handed no ciphertext (the agent never passes `content`), let alone a
value, and it can never emit either kind."""

from __future__ import annotations

import json

from helpers.kernels import add, agent, emitted_by, tenant_policy
from helpers.vault import VALUE, assert_nowhere

from stage0.vault import credentials, crypto
from stage0.vault import master as masters

ECHO = ("def main(span):\n"
        "    return [{'emit_span': {'entity_type': 'seen', 'metadata': {'got': span}}}]\n")


def test_a_tenant_policy_watching_the_vault_gets_no_ciphertext(loader, kernel_conn,  # noqa: F811
                                                                operator):
    policy = tenant_policy(kernel_conn, operator, ECHO, on=("secret", "tenant_key"))
    master = masters.Master(crypto.new_key(), "test")
    credentials.put(kernel_conn, operator, master, "acme", "openai", VALUE)
    agent(loader)
    seen = emitted_by(kernel_conn, policy["id"], "seen")
    got = [row["metadata"]["got"] for row in seen]
    assert {g["entity_type"] for g in got} == {"secret", "tenant_key"}
    text = json.dumps(got)
    assert "ciphertext" not in text and "nonce" not in text and "content" not in text
    assert_nowhere(text)


def test_no_policy_may_emit_a_vault_kind(loader, kernel_conn, operator):  # noqa: F811
    codes = []
    for kind in ("secret", "tenant_key"):
        policy = tenant_policy(kernel_conn, operator, (
            "def main(span):\n"
            f"    return [{{'emit_span': {{'entity_type': '{kind}', 'name': 'openai', "
            "'content': {'ciphertext': 'x'}}}]\n"))
        codes.append(policy["id"])
    add(kernel_conn, operator, "note")
    agent(loader)
    for policy_id in codes:
        [error] = emitted_by(kernel_conn, policy_id, "policy_error")
        assert error["metadata"]["cause"] == "POLICY_KIND_NEVER_EMITTED"
    assert credentials.names(kernel_conn, "acme") == []
