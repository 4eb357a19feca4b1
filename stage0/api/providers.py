"""The admin API for LLM providers (docs/providers.md): list and show (a tenant's admin sees
its own rows and the system's), add/change, enable/disable (the operator only: a provider
row decides where the platform's host connects to, private addresses included), and test
(one real call as the caller's tenant, recorded like any other, cancelled if the request
ends first); and a tenant's opt-in transcripts (/api/admin/llm-transcripts: its admin sets
and reads its own, the operator any tenant's)."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from stage0.api.endpoint import Call, Endpoint
from stage0.api.errors import ApiError
from stage0.errors import LoglineError
from stage0.gov import apikeys
from stage0.ledger import records
from stage0.ledger.db import Connection
from stage0.llm import admin, providers, transcripts
from stage0.llm.host import LlmHost, credential_source, no_credentials

NAME = {"name": ("path", "the provider's name")}
_HOSTS: weakref.WeakKeyDictionary[Any, LlmHost] = weakref.WeakKeyDictionary()
_HOSTS_LOCK = threading.Lock()


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not dropped

    name: str
    kind: str = Field(description="openai, ollama or anthropic")
    base_url: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    prices: dict[str, Any] | None = None
    credential: str | None = None
    egress: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    tenant_id: str = Field("system", description="system: every tenant may call it")


class ProviderSummary(BaseModel):
    id: str
    seq: int
    name: str
    tenant_id: str
    status: str | None
    kind: str | None = None
    model: str | None = None
    base_url: str | None = None
    credential: str | None = None
    problem: str | None = Field(None, description="why the row cannot be used, if it cannot")


class ProviderList(BaseModel):
    providers: list[ProviderSummary]


class ProviderOut(BaseModel):
    id: str
    seq: int
    at: str
    name: str
    kind: str
    base_url: str
    model: str
    params: dict[str, Any]
    limits: dict[str, Any]
    prices: dict[str, Any] | None
    credential: str | None
    egress: dict[str, Any]
    enabled: bool
    tenant_id: str


class ProviderChanged(BaseModel):
    id: str
    seq: int
    name: str
    tenant_id: str
    status: str | None


class TestIn(BaseModel):
    tenant_id: str | None = Field(None, description="the operator may test as another tenant")


class TestOut(BaseModel):
    ok: bool
    model: str | None
    tokens_in: int
    tokens_out: int
    latency_ms: int
    cost: float | None
    error: dict[str, Any] | None
    retry_in_s: float | None
    execution_id: str


def _principal(call: Call) -> apikeys.Principal:
    assert call.principal is not None
    return call.principal


def _is_operator(call: Call) -> bool:
    return apikeys.OPERATOR_ROLE in _principal(call).roles


def _operator_only(call: Call) -> None:
    if not _is_operator(call):
        raise ApiError(403, "OPERATOR_ONLY", "only the platform operator's key may change "
                       "provider rows (they decide where the platform connects to)")


def _tenant(call: Call, asked: str | None) -> str:
    """The operator acts for any tenant it names; anyone else for their own."""
    own = _principal(call).tenant_id
    if asked and asked != own and not _is_operator(call):
        raise ApiError(403, "OPERATOR_ONLY", "only the operator acts for another tenant")
    return asked or own


def _name(call: Call) -> str:
    name = call.request.path_params["name"]
    if not isinstance(name, str) or len(name) > 63:
        raise ApiError(404, "PROVIDER_NOT_FOUND", "no such provider")
    return name


async def _db(call: Call, fn: Any) -> Any:
    """call.db on the kernel role; a provider that is not there is a 404."""
    try:
        return await call.db(fn, role="kernel")
    except LoglineError as exc:
        if exc.code == "PROVIDER_NOT_FOUND":
            raise ApiError(404, exc.code, exc.message) from None
        raise


def _summary(row: dict[str, Any]) -> ProviderSummary:
    return ProviderSummary(**row)


async def list_providers(call: Call) -> ProviderList:
    tenant = None if _is_operator(call) and not call.query("tenant") else \
        _tenant(call, call.query("tenant"))
    rows = await call.db(lambda conn: admin.listed(conn, call.state.root, tenant), role="kernel")
    return ProviderList(providers=[_summary(r) for r in rows])


async def show_provider(call: Call) -> ProviderOut:
    tenant, name = _tenant(call, call.query("tenant")), _name(call)
    shown = await _db(call, lambda conn: admin.show(conn, call.state.root, name, tenant))
    return ProviderOut(**shown)


def _changed(span: dict[str, Any]) -> ProviderChanged:
    return ProviderChanged(id=span["id"], seq=span["seq"], name=span["name"],
                           tenant_id=span["tenant_id"], status=span["status"])


async def add_provider(call: Call) -> ProviderChanged:
    _operator_only(call)
    body: ProviderIn = call.body
    provider = providers.parse(body.model_dump(exclude_none=True), "body")
    state = call.state

    def write(conn: Connection) -> dict[str, Any]:
        return admin.add(conn, state.key, state.root, state.id_secret, provider)
    return _changed(await call.db(write, role="kernel"))


def _set_enabled(enabled: bool) -> Any:
    async def handler(call: Call) -> ProviderChanged:
        _operator_only(call)
        name, tenant = _name(call), call.query("tenant") or "system"
        state = call.state

        def write(conn: Connection) -> dict[str, Any]:
            return admin.set_enabled(conn, state.key, state.root, name, tenant, enabled)
        return _changed(await _db(call, write))
    return handler


def _host(state: Any) -> LlmHost:
    with _HOSTS_LOCK:
        host = _HOSTS.get(state)
        if host is None:
            host = LlmHost(lambda: state.database.connect("kernel", autocommit=True),
                           state.key, state.root, no_credentials, worker="api",
                           master=state.home, id_secret=state.id_secret)
            host.client.credentials = credential_source(host.conn, state.home)
            _HOSTS[state] = host
            weakref.finalize(state, host.close)
        return host


async def test_provider(call: Call) -> TestOut:
    body: TestIn = call.body
    tenant, name = _tenant(call, body.tenant_id), _name(call)
    user = _principal(call).user_id
    host = _host(call.state)
    cancel = threading.Event()
    try:
        answer = await anyio.to_thread.run_sync(
            lambda: host.call(name, tenant, user, call.request_id, "chat",
                              admin.TEST_MESSAGES, {"max_tokens": 8},
                              caller={"name": "api provider test"}, cancel=cancel,
                              durable=True),
            abandon_on_cancel=True)
    finally:
        cancel.set()  # the request ended (answered, timed out or gone): stop the call
    return TestOut(**{k: answer[k] for k in TestOut.model_fields})


class TranscriptsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep: StrictBool = Field(description="true: keep the prompts and answers of this tenant's "
                       "calls, encrypted with its data key; false: hashes and lengths only")
    tenant_id: str | None = Field(None, description="the operator may set another tenant's")


class TranscriptsOut(BaseModel):
    tenant_id: str
    keep: bool


class TranscriptOut(BaseModel):
    execution_id: str
    tenant_id: str
    at: str
    input: Any = Field(description="what was sent: the messages, or the texts to embed")
    output: Any = Field(description="the answer's text or embeddings (null when it failed)")


async def transcripts_setting(call: Call) -> TranscriptsOut:
    tenant = _tenant(call, call.query("tenant"))
    root = call.state.root
    keep = await call.db(lambda conn: transcripts.keeps(
        conn, records.platform(conn, root).keys, tenant), role="kernel")
    return TranscriptsOut(tenant_id=tenant, keep=keep)


async def set_transcripts(call: Call) -> TranscriptsOut:
    body: TranscriptsIn = call.body
    tenant = _tenant(call, body.tenant_id)
    state, who = call.state, _principal(call).user_id

    def write(conn: Connection) -> dict[str, Any]:
        return transcripts.set_keep(conn, state.key, state.root, state.id_secret, tenant,
                                    body.keep, by=who, master=state.home)
    await _db(call, write)
    return TranscriptsOut(tenant_id=tenant, keep=body.keep)


async def read_transcript(call: Call) -> TranscriptOut:
    tenant = _tenant(call, call.query("tenant"))
    execution_id = call.request.path_params["execution_id"]
    state = call.state
    try:
        shown = await call.db(lambda conn: transcripts.read(
            conn, state.home, state.root, tenant, execution_id), role="kernel")
    except LoglineError as exc:
        if exc.code == "TRANSCRIPT_NOT_FOUND":
            raise ApiError(404, exc.code, exc.message) from None
        raise
    return TranscriptOut(**shown)


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/admin/providers", list_providers, "LLM provider rows: your "
             "tenant's and the system's (the operator: all, or ?tenant=)",
             "api.provider_list", response=ProviderList,
             query={"tenant": ("string", "a tenant (the operator only, for another)")}),
    Endpoint("GET", "/api/admin/providers/{name}", show_provider, "One provider's "
             "configuration (never a secret: credential is a name)", "api.provider_read",
             response=ProviderOut,
             query={**NAME, "tenant": ("string", "the tenant (default yours)")}),
    Endpoint("POST", "/api/admin/providers", add_provider, "Add a provider row, or change the "
             "one of this name (operator)", "api.provider_add", limit="admin",
             body=ProviderIn, response=ProviderChanged, status=201),
    Endpoint("POST", "/api/admin/providers/{name}/enable", _set_enabled(True),
             "Enable a provider (operator)", "api.provider_enable", limit="admin",
             response=ProviderChanged,
             query={**NAME, "tenant": ("string", "the row's tenant (default system)")}),
    Endpoint("POST", "/api/admin/providers/{name}/disable", _set_enabled(False),
             "Disable a provider: calls are refused (operator)", "api.provider_disable",
             limit="admin", response=ProviderChanged,
             query={**NAME, "tenant": ("string", "the row's tenant (default system)")}),
    Endpoint("POST", "/api/admin/providers/{name}/test", test_provider, "One small real "
             "call as your tenant, recorded as a provider_execution span",
             "api.provider_test", limit="admin", body=TestIn, response=TestOut, query=NAME),
    Endpoint("GET", "/api/admin/llm-transcripts", transcripts_setting, "Whether your tenant "
             "keeps the prompts and answers of its LLM calls (encrypted)",
             "api.transcripts_read", response=TranscriptsOut,
             query={"tenant": ("string", "a tenant (the operator only, for another)")}),
    Endpoint("POST", "/api/admin/llm-transcripts", set_transcripts, "Keep (or stop keeping) "
             "your tenant's LLM call transcripts, encrypted with its data key",
             "api.transcripts_set", limit="admin", body=TranscriptsIn,
             response=TranscriptsOut),
    Endpoint("GET", "/api/admin/llm-transcripts/{execution_id}", read_transcript, "The "
             "prompt and answer of one of your tenant's calls (kept only when it opted in)",
             "api.transcript_read", response=TranscriptOut,
             query={"execution_id": ("path", "the call's provider_execution id"),
                    "tenant": ("string", "a tenant (the operator only, for another)")}),
]
