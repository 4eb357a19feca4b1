"""The worker expires memories itself (stage0/runtime/worker.py's memory_expire chore, issue
12): a memory past its ttl_at becomes MEMORY_FORGOTTEN without `logline memory expire` being
run from a timer. The test awaits the `expired` version's append notification, not a clock."""

from __future__ import annotations

import json
import threading
import time

import pytest

from stage0.errors import LoglineError
from stage0.ledger import notify, store
from stage0.memory.service import Caller, Memory
from stage0.runtime.worker import Worker
from stage0.vault import crypto
from stage0.vault import master as masters

ANA = Caller("ana", "acme")


def test_the_worker_destroys_the_keys_of_a_memory_past_its_ttl(seeded, home, operator):
    memory_conn = seeded.connect("kernel")
    listener = seeded.connect("kernel", autocommit=True)
    worker = Worker(seeded, home, worker_id="expirer", sandbox_size=1, kernels=(),
                    every_ms={"memory_expire": 100})
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        memory = Memory(memory_conn, operator, masters.Master(crypto.new_key(), "test"))
        lasting = memory.upsert(ANA, [{"text": "the lasting gate code 1234", "ttl_s": 3600}])[0]
        [fleeting] = memory.upsert(ANA, [{"text": "today's gate code is 4417", "ttl_s": 1}])
        memory_conn.commit()
        notify.listen(listener)
        thread.start()
        deadline = time.monotonic() + 30
        expired = False
        while not expired:
            assert time.monotonic() < deadline, "the worker never expired the memory"
            for payload in notify.wait(listener, 1.0):
                note = json.loads(payload)
                expired |= note.get("entity_type") == "memory" and \
                    note.get("id") == fleeting["span_id"] and note.get("seq") == 1
        with pytest.raises(LoglineError) as caught:
            memory.get(ANA, fleeting["span_id"])
        assert caught.value.code == "MEMORY_FORGOTTEN"
        assert store.head(memory_conn, fleeting["span_id"])["status"] == "expired"
        assert memory.get(ANA, lasting["span_id"])["text"] == "the lasting gate code 1234"
    finally:
        worker.stop.set()
        thread.join(timeout=30)
        memory_conn.close()
        listener.close()
    assert not thread.is_alive() and worker.stats["memory_expire"] >= 1
