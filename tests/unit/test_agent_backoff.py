"""`logline agent run` against a server that refuses its claims: it backs off (doubling,
capped, reset by the next answer) and keeps running; it never exits on a 4xx. Before, the
first refusal ended the agent process (a squatted claim id made every claim a 409)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

from stage0.agent import runner
from stage0.agent.runner import Agent, AgentConfig
from stage0.errors import LoglineError


def refusal(status: int, code: str) -> LoglineError:
    exc = LoglineError(code, f"the server said {status}")
    exc.status = status  # type: ignore[attr-defined]  # as stage0.agent.client raises them
    return exc


class Waits(threading.Event):
    """The agent's stop event, recording each back-off instead of sleeping through it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


class Server:
    """Answers the agent's claims from a script; once it runs out, asks the agent to stop."""

    def __init__(self, agent: Agent, answers: list[Any]) -> None:
        self.agent, self.answers, self.claims = agent, list(answers), 0

    def post(self, path: str, body: Any) -> Any:
        assert path == "/api/jobs/claim", path
        self.claims += 1
        if not self.answers:
            self.agent.stopping.set()
            return {"jobs": []}
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def agent(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    agent = Agent(tmp_path / "state", AgentConfig("http://server.invalid", "llk_x_y",
                                                  str(root)))
    agent.stopping = Waits()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield agent
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_an_agent_refused_by_the_server_backs_off_and_keeps_running(agent, capsys):
    agent.client = server = Server(agent, [
        refusal(409, "LEDGER_SEQ_CONFLICT"), refusal(400, "BAD_FIELD"),
        refusal(403, "G_ROLE_DENIED"), refusal(429, "RATE_LIMITED"),
        refusal(500, "INTERNAL"), LoglineError("API_UNREACHABLE", "connection refused"),
        refusal(404, "NOT_FOUND"),
        {"jobs": []},  # an answer: the next refusal waits the least again
        refusal(401, "AUTH_INVALID"),
    ])
    assert agent.run() == 0  # stopped when asked, not by a refusal
    assert server.claims == 10
    assert agent.stopping.waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 2.0]
    log = capsys.readouterr().err
    assert log.count('"action": "claim_refused"') == 6
    assert log.count('"action": "server_unreachable"') == 2
    assert '"code": "AUTH_INVALID"' in log and '"action": "agent_stopped"' in log


def test_a_one_shot_run_still_reports_a_refusal(agent):
    agent.client = Server(agent, [refusal(409, "LEDGER_SEQ_CONFLICT")])
    with pytest.raises(LoglineError) as refused:
        agent.run(once=True)
    assert refused.value.code == "LEDGER_SEQ_CONFLICT"
    assert runner.BACKOFF_MAX_S >= runner.BACKOFF_MIN_S > 0
