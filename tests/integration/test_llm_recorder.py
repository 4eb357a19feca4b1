"""The LLM host's recorder (stage0/llm/recorder.py) on a real ledger: provider_execution
records are appended in batches after the call, their tokens count against the daily budget
while they wait, a flush that fails is logged and retried (never dropped), and
Loader.close() flushes them and closes the host's connections."""

from __future__ import annotations

import threading
import uuid

import pytest
from helpers.llm_server import LlmServer

from stage0 import keys
from stage0.boot.loader import Loader
from stage0.errors import LoglineError
from stage0.llm import admin, host, providers
from stage0.llm.recorder import Recorder

PROVIDER_EXEC = "00000000-0000-4000-8000-000000000005"
MESSAGES = [{"role": "user", "content": "hello"}]
SLOW = {"interval_s": 3600, "batch": 10_000}  # nothing is flushed until asked


@pytest.fixture(scope="module")
def model_server():
    with LlmServer() as s:
        yield s


def add(loader, model_server, **limits):
    p = providers.parse({
        "name": "local", "kind": "openai", "base_url": model_server.url + "/v1",
        "model": "tiny", "tenant_id": "acme", "egress": {"addresses": ["127.0.0.1"]},
        "limits": {"max_attempts": 1, **limits}})
    admin.add(loader.conn, loader.key, loader.root, keys.id_secret(loader.home, loader.key), p)


def run(loader):
    return loader.boot(PROVIDER_EXEC, {"provider": "local", "messages": MESSAGES},
                       user_id="alice", tenant_id="acme", trace_id=str(uuid.uuid4()))


def stored(conn, ids=None):
    rows = conn.execute("SELECT id::text AS id, status FROM ledger.universal_registry "
                        "WHERE entity_type = 'provider_execution' ORDER BY position").fetchall()
    return [r for r in rows if ids is None or r["id"] in ids]


def test_records_wait_in_the_queue_and_a_flush_appends_them_in_order(seeded, home,
                                                                      model_server):
    with Loader(seeded, home) as ld:
        llm = host.attach(ld, credentials=lambda t, n: None, recorder=SLOW)
        add(ld, model_server)
        ids = [run(ld)["execution_id"] for _ in range(3)]
        assert stored(ld.conn) == [] and llm.recorder.queued == 3
        llm.flush()
        assert [r["id"] for r in stored(ld.conn)] == ids
        assert llm.recorder.queued == 0


def test_queued_tokens_count_against_the_budget(seeded, home, model_server):
    """Nothing is committed yet, so the ledger's count is 0: the queued records' tokens
    still refuse the third call (18 tokens a call, a budget of 30)."""
    with Loader(seeded, home) as ld:
        llm = host.attach(ld, credentials=lambda t, n: None, recorder=SLOW)
        add(ld, model_server, daily_token_budget=30)
        assert run(ld)["ok"] and run(ld)["ok"]
        assert stored(ld.conn) == []
        refused = run(ld)
        assert refused["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"
        assert "36 of its 30 tokens" in refused["error"]["message"]
        llm.flush()  # once committed, the ledger's count says the same (not twice as much)
        again = run(ld)
        assert "36 of its 30 tokens" in again["error"]["message"]


def test_a_failed_flush_is_logged_and_retried_never_dropped(seeded, home, model_server,
                                                              capfd):
    down = threading.Event()
    down.set()

    def connect():
        if down.is_set():
            raise LoglineError("DB_UNAVAILABLE", "the database is down (test)")
        return seeded.connect("kernel", autocommit=True)

    with Loader(seeded, home) as ld:
        llm = host.attach(ld, credentials=lambda t, n: None)
        add(ld, model_server)
        llm.recorder._connect = connect  # the recorder's next connection fails
        if llm.recorder._conn is not None:
            llm.recorder._conn.close()
        first = run(ld)["execution_id"]
        with pytest.raises(LoglineError) as exc:
            llm.flush(timeout=0.3)
        assert exc.value.code == "RECORDER_FLUSH_FAILED"
        assert "DB_UNAVAILABLE" in exc.value.message
        assert stored(ld.conn) == [] and llm.recorder.queued == 1
        second = run(ld)["execution_id"]
        down.clear()  # the database is back: both are appended, in order
        llm.flush()
        assert [r["id"] for r in stored(ld.conn)] == [first, second]
    err = capfd.readouterr().err
    assert "provider_records_flush_failed" in err and "provider_records_flushed" in err


def test_loader_close_flushes_and_closes_the_hosts_connections(seeded, home, model_server):
    with seeded.connect("kernel") as conn:
        with Loader(seeded, home) as ld:
            llm = host.attach(ld, credentials=lambda t, n: None, recorder=SLOW)
            add(ld, model_server)
            ids = [run(ld)["execution_id"] for _ in range(2)]
            record_conn = llm.recorder._conn
            assert stored(conn) == []
        assert [r["id"] for r in stored(conn, ids)] == ids
        assert llm.conn.closed and (record_conn is None or record_conn.closed)
        assert llm.recorder._thread is None


def test_a_full_queue_holds_the_caller_back_until_a_flush_makes_room(seeded, home):
    """While the database is down the queue fills; the next caller waits (no record is
    dropped to make room); once the database is back the queue drains and it goes on."""
    down = threading.Event()
    down.set()

    def connect():
        if down.is_set():
            raise LoglineError("DB_UNAVAILABLE", "the database is down (test)")
        return seeded.connect("kernel", autocommit=True)

    recorder = Recorder(connect, keys.operator_key(home), max_queue=2, interval_s=0.01)
    span = {"entity_type": "provider_execution", "who": "stage0", "this": "local",
            "owner_id": "alice", "tenant_id": "acme", "visibility": "tenant",
            "metadata": {"tokens_in": 1, "tokens_out": 1}}
    recorder.add(span, ("acme", "local", "2026-01-01"), 2)
    recorder.add(span, ("acme", "local", "2026-01-01"), 2)
    assert recorder.pending_tokens(("acme", "local", "2026-01-01")) == 4
    third = threading.Thread(target=recorder.add, args=(span,))
    third.start()
    third.join(0.3)
    assert third.is_alive() and recorder.queued == 2  # waiting: not dropped, not past
    down.clear()
    third.join(10)
    assert not third.is_alive()
    recorder.close()
    assert recorder.queued == 0
    assert recorder.pending_tokens(("acme", "local", "2026-01-01")) == 0


def test_closing_while_the_database_is_gone_says_which_records_are_lost(seeded, home,
                                                                       model_server, capfd):
    """A worker that lost its database closes its loader before reconnecting: the close
    does not raise (nor hang past its timeout), and names the records it could not keep."""
    with Loader(seeded, home) as ld:
        llm = host.attach(ld, credentials=lambda t, n: None)
        add(ld, model_server)

        def gone():
            raise LoglineError("DB_UNAVAILABLE", "the database is down (test)")
        llm.recorder._connect = gone
        if llm.recorder._conn is not None:
            llm.recorder._conn.close()
        lost = run(ld)["execution_id"]
        llm.recorder.close(timeout=0.3)
    err = capfd.readouterr().err
    assert "provider_records_lost" in err and lost in err
