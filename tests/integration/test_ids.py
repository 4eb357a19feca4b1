"""Ids the platform derives (job claims, jobs, contracts, api keys) are keyed with the id
secret, so a writer who appends a span at the id the old uuid5 derivation would give (from
public inputs) takes nothing from the platform; and a claim whose id is taken anyway skips
that job, records why and hands out the others. Each attack here wedged a tenant (or served
as an oracle on another tenant's names) before ids were keyed."""

from __future__ import annotations

import uuid

import pytest
from helpers import REPO

from stage0 import keys
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.gov import apikeys, contract_store, jobs, proposals
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import contract_id, load
from stage0.ledger import store
from stage0.spans.ids import derive_id


def old_style(*parts: str) -> str:
    """The id the platform used to derive: uuid5 of public inputs, computable by anyone."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "logline:" + ":".join(parts)))


def squat(conn, operator, span_id: str, tenant: str = "mallory") -> None:
    """What any writer can do: append a span of its own under a chosen id."""
    store.append(conn, [{"id": span_id, "seq": 0, "entity_type": "note", "who": "mallory",
                          "this": "squat", "owner_id": "mallory", "tenant_id": tenant,
                          "visibility": "tenant"}], operator)


@pytest.fixture
def secret(home, operator) -> bytes:
    return keys.id_secret(home, operator)


@pytest.fixture
def acme(kernel_conn, operator, home, secret) -> Principal:
    """Tenant acme with personal_ops active; the principal is its requester (and agent)."""
    principal = Principal("k0000000000000001", "alice", "acme",
                          ("admin", "requester", "agent"))
    contract_store.activate(kernel_conn, operator, home.root_public_key(), principal,
                        "personal_ops@1.0.0", str(uuid.uuid4()), secret=secret)
    return principal


def queue_job(conn, operator, home, principal, secret, path: str = "photos") -> str:
    outcome = proposals.propose(conn, operator, home.root_public_key(), principal,
                                 "personal_ops.list_files", {"path": path},
                                 str(uuid.uuid4()), secret=secret)
    assert outcome.decision.outcome == "ALLOW" and outcome.job_id
    return outcome.job_id


def claim(conn, operator, home, principal, secret, limit: int = 4) -> list[dict]:
    with conn.transaction():
        return jobs.claim(conn, operator, home.root_public_key(), principal, limit,
                                secret=secret)


def test_a_span_at_the_old_claim_id_no_longer_keeps_an_agent_from_its_job(
        kernel_conn, operator, home, acme, secret):
    job_id = queue_job(kernel_conn, operator, home, acme, secret)
    squat(kernel_conn, operator, old_style("claim", job_id), tenant="acme")
    [handed] = claim(kernel_conn, operator, home, acme, secret)
    assert handed["id"] == job_id
    span = store.head(kernel_conn, jobs.claim_id(secret, job_id))
    assert (span["entity_type"], span["status"]) == ("job_claim", "claimed")
    result, new = jobs.report(kernel_conn, operator, acme, job_id, "done", {"files": []},
                                    secret=secret)
    assert new and result["id"] == derive_id(secret, "result", job_id)


def test_a_claim_that_cannot_be_recorded_skips_that_job_and_says_why(
        kernel_conn, operator, home, acme, secret):
    taken, fine = (queue_job(kernel_conn, operator, home, acme, secret, p) for p in ("a", "b"))
    squat(kernel_conn, operator, jobs.claim_id(secret, taken), tenant="acme")
    assert [j["id"] for j in claim(kernel_conn, operator, home, acme, secret)] == [fine]
    [refused] = [r for r in kernel_conn.execute(
        "SELECT status, content FROM ledger.universal_registry WHERE entity_type = "
        "'job_claim' AND parent_id = %s", (taken,))]
    assert refused["status"] == "refused"
    assert refused["content"]["reason"] == "JOB_CLAIM_FAILED"
    assert refused["content"]["detail"].startswith("LEDGER_")  # the ledger said no
    # Asked again: the claimed job comes back (not yet reported), the skipped one never does.
    assert [j["id"] for j in claim(kernel_conn, operator, home, acme, secret)] == [fine]
    assert proposals.proposal_state(kernel_conn, home.root_public_key(), "acme",
                                     store.head(kernel_conn, taken)["parent_id"]
                                     )["jobs"]["execute"]["state"] == "refused"


def test_a_tenant_contract_cannot_be_squatted_nor_probed_by_another_tenant(
        kernel_conn, operator, secret):
    contract = load(REPO / "ROW" / "contracts" / "personal_ops@1.0.0.yaml").model_copy(
        update={"name": "secret_project"})
    globex = Principal("k0000000000000002", "gus", "globex", ("admin",))
    # Mallory guesses globex's contract name and takes the id the old derivation gave it.
    squat(kernel_conn, operator, old_style("contract", "globex", "secret_project@1.0.0"))
    span = contract_store.publish(kernel_conn, operator, globex, contract, secret=secret)
    assert span["id"] == contract_store.tenant_contract_id(secret, "globex", "secret_project",
                                                       "1.0.0")
    assert span["id"] != old_style("contract", "globex", "secret_project@1.0.0")
    with pytest.raises(LoglineError) as again:
        contract_store.publish(kernel_conn, operator, globex, contract, secret=secret)
    assert again.value.code == "CONTRACT_EXISTS"


def test_system_contracts_and_api_keys_are_found_by_their_keyed_ids(
        kernel_conn, operator, secret):
    span = store.head(kernel_conn, contract_id(secret, "personal_ops", "1.0.0"))
    assert span and span["entity_type"] == "contract"  # seeded under the keyed id
    assert store.head(kernel_conn, old_style("contract", "personal_ops@1.0.0")) is None
    token, issued = apikeys.create(kernel_conn, operator, "alice", "acme", ("reader",),
                                   secret)
    key_id = issued["metadata"]["key_id"]
    assert issued["id"] == apikeys.span_id_for(secret, key_id) != old_style("api_key", key_id)
    assert apikeys.authenticate(kernel_conn, token, secret).user_id == "alice"
    assert apikeys.authenticate(kernel_conn, token, bytes(32)) is None


def test_a_machine_with_its_own_key_needs_the_operators_id_secret(tmp_path, home, operator):
    other = Home(tmp_path / "machine")
    key = keys.write_new_key(other.operator_key)
    other.write_config({"root_public_key": home.root_public_key()})
    with pytest.raises(LoglineError) as missing:
        keys.id_secret(other, key)
    assert missing.value.code == "ID_SECRET_MISSING"
    keys.write_id_secret(other.keys / keys.ID_SECRET_FILE, keys.id_secret(home, operator))
    assert keys.id_secret(other, key) == keys.derivation_secret(operator)
    assert keys.derivation_secret(key) != keys.derivation_secret(operator)


def test_what_was_recorded_under_the_old_ids_still_counts_and_only_that(
        kernel_conn, operator, home, secret):
    """A ledger from before keyed ids: its api keys still authenticate and its tenant
    contracts can still be activated; a span of another kind at such an id counts for
    nothing (clients cannot append api_key or contract spans)."""
    key_id, token = "0123456789abcdef", "llk_0123456789abcdef_" + "A" * 43
    store.append(kernel_conn, [{
        "id": old_style("api_key", key_id), "seq": 0, "entity_type": "api_key",
        "who": "logline", "did": "issued", "this": "api key", "owner_id": "olga",
        "tenant_id": "acme", "visibility": "private", "status": "active",
        "metadata": {"key_id": key_id, "roles": ["reader"],
                     "token_hash": apikeys.token_hash(token)}}], operator)
    assert apikeys.authenticate(kernel_conn, token, secret).user_id == "olga"
    apikeys.revoke(kernel_conn, operator, key_id, secret)
    assert apikeys.authenticate(kernel_conn, token, secret) is None

    contract = load(REPO / "ROW" / "contracts" / "personal_ops@1.0.0.yaml").model_copy(
        update={"name": "old_ops"})
    store.append(kernel_conn, [{
        "id": old_style("contract", "acme", "old_ops@1.0.0"), "seq": 0,
        "entity_type": "contract", "who": "ann", "did": "published", "this": "old_ops@1.0.0",
        "name": "old_ops", "owner_id": "ann", "tenant_id": "acme", "visibility": "tenant",
        "status": "published", "content": contract.model_dump(mode="json")}], operator)
    squat(kernel_conn, operator, old_style("contract", "globex", "old_ops@1.0.0"), "globex")
    acme = Principal("k1", "ann", "acme", ("admin",))
    globex = Principal("k2", "gus", "globex", ("admin",))
    activation = contract_store.activate(kernel_conn, operator, home.root_public_key(), acme,
                                     "old_ops@1.0.0", str(uuid.uuid4()), secret=secret)
    assert activation["content"]["contract_id"] == old_style("contract", "acme",
                                                             "old_ops@1.0.0")
    with pytest.raises(LoglineError) as nothing:
        contract_store.activate(kernel_conn, operator, home.root_public_key(), globex,
                            "old_ops@1.0.0", str(uuid.uuid4()), secret=secret)
    assert nothing.value.code == "CONTRACT_NOT_FOUND"
    with pytest.raises(LoglineError) as exists:
        contract_store.publish(kernel_conn, operator, acme, contract, secret=secret)
    assert exists.value.code == "CONTRACT_EXISTS"
    refs = [c["ref"] for c in contract_store.contracts(kernel_conn, home.root_public_key(),
                                                   "acme")[0]]
    assert sorted(refs) == sorted(set(refs))  # each contract listed once
