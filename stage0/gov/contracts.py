"""Contracts (the seeds' "IDL"): what a domain's actions are, who may ask for them, who must
approve them and how the arguments look. Authored as YAML in ROW/contracts/, stored as
`contract` spans (one id per name and version, so a new version never changes a decision
taken under an old one). Those ids are derived with the platform's id secret (stage0.spans.ids), so
nobody can take one first or probe which names exist. The core stays neutral: a new domain is
a new contract, not code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stage0.errors import LoglineError
from stage0.spans.ids import derive_id

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


class ArgSpec(BaseModel):
    """One argument: a small, closed subset of JSON Schema (enough to refuse bad input)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["string", "integer", "boolean", "array"]
    required: bool = False
    items: Literal["string", "integer"] | None = None
    max_length: int | None = Field(default=None, ge=1)
    min_items: int | None = Field(default=None, ge=0)
    max_items: int | None = Field(default=None, ge=1)
    #: relpath: '/'-separated, relative, no '..' (a path inside an agent's root);
    #: name: one path component.
    format: Literal["relpath", "name"] | None = None


class ActionProfile(BaseModel):
    """How one action is governed."""

    model_config = ConfigDict(extra="forbid")
    description: str
    destructive: bool
    requesters: list[str] = Field(min_length=1)
    approvers: list[str] = []
    approvals: int = Field(default=0, ge=0)
    approval_ttl_s: int = Field(default=86400, ge=1)
    args: dict[str, ArgSpec] = {}
    #: "all": every decision is a gate_decision span; "denials": only refusals are (for
    #: high-volume reads, whose allowances would drown the ledger).
    record: Literal["all", "denials"] = "all"
    #: Short sentences POST /api/intents understands, with {arg} slots: "delete duplicates
    #: in {path}". Matched deterministically (no model decides anything).
    phrases: list[str] = []

    @model_validator(mode="after")
    def _destructive_needs_approval(self) -> ActionProfile:
        if self.destructive and (self.approvals < 1 or not self.approvers):
            raise ValueError("a destructive action needs approvers and approvals >= 1")
        if self.approvals > 0 and not self.approvers:
            raise ValueError("approvals > 0 needs approvers")
        return self


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    description: str = ""
    roles: dict[str, str]
    actions: dict[str, ActionProfile]
    #: The role of the runtime that executes jobs: it may never approve (separation of duties).
    executor_role: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if not _NAME.match(self.name) or not _SEMVER.match(self.version):
            raise ValueError("name is lowercase_words and version is MAJOR.MINOR.PATCH")
        for action, profile in self.actions.items():
            if not _NAME.match(action):
                raise ValueError(f"action name {action!r} is not lowercase_words")
            unknown = set(profile.requesters + profile.approvers) - set(self.roles)
            if unknown:
                raise ValueError(f"action {action} names undeclared roles {sorted(unknown)}")
            for phrase in profile.phrases:
                slots = set(re.findall(r"\{(\w+)\}", phrase))
                if slots - set(profile.args):
                    raise ValueError(f"action {action}: phrase {phrase!r} names unknown "
                                     f"arguments {sorted(slots - set(profile.args))}")
        if self.executor_role is not None and self.executor_role not in self.roles:
            raise ValueError(f"executor_role {self.executor_role!r} is not a declared role")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def contract_id(secret: bytes, name: str, version: str) -> str:
    """The id of the system contract NAME@VERSION (keys.id_secret gives `secret`)."""
    return derive_id(secret, "contract", f"{name}@{version}")


def parse(data: Any, where: str) -> Contract:
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise LoglineError("CONTRACT_INVALID", f"{field}: {first['msg']}" if field
                           else first["msg"], where) from None


def load(path: Path) -> Contract:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LoglineError("CONTRACT_BAD_YAML", str(getattr(exc, "problem", exc)), where) \
            from None
    contract = parse(data, str(path))
    if path.stem != contract.ref:
        raise LoglineError("CONTRACT_FILE_NAME", f"the file must be named {contract.ref}.yaml",
                           str(path))
    return contract


def to_span(contract: Contract, secret: bytes) -> dict[str, Any]:
    """The unsigned row a contract is seeded as (public: it declares rules, holds no data)."""
    return {
        "id": contract_id(secret, contract.name, contract.version), "entity_type": "contract",
        "who": "logline", "did": "declared",
        "this": contract.ref, "name": contract.name, "description": contract.description,
        "owner_id": "system", "tenant_id": "system", "visibility": "public",
        "status": "published", "content": contract.model_dump(mode="json"),
        "metadata": {"version": contract.version},
    }
