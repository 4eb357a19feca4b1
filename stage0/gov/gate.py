"""The gate: the one function every governed action passes through. Pure and fail-closed.

decide() resolves the action canonically against the active contract, checks the caller's
roles and the arguments, and answers ALLOW, DENY or PENDING_APPROVAL with a stable reason
code. Anything it does not recognise is denied. It reads nothing and writes nothing: callers
record each Decision as a `gate_decision` span.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from stage0.gov.contracts import ActionProfile, ArgSpec, Contract

Outcome = Literal["ALLOW", "DENY", "PENDING_APPROVAL"]


@dataclass(frozen=True)
class Approval:
    """One approver's answer to one proposal."""

    approver: str
    approver_roles: frozenset[str]
    approve: bool
    at: datetime


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    message: str
    action: str
    contract: str | None = None
    approvals: int = 0
    required: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_action(action: str, contract: Contract | None) -> str | None:
    """`delete`, `personal_ops.delete` and ` Personal_Ops.Delete ` are one action; an action
    named for another domain is not this contract's."""
    name = action.strip().lower()
    domain, dot, bare = name.rpartition(".")
    if dot and contract is not None and domain != contract.name:
        return None
    return bare if dot else name


def check_args(args: Any, spec: dict[str, ArgSpec]) -> str | None:
    """Why `args` do not fit the action's argument spec, or None."""
    if not isinstance(args, dict):
        return "arguments must be an object"
    unknown = sorted(set(args) - set(spec))
    if unknown:
        return f"unknown argument(s): {', '.join(unknown)}"
    for name, rule in spec.items():
        if name not in args or args[name] is None:
            if rule.required:
                return f"{name} is required"
            continue
        problem = _check_value(args[name], rule)
        if problem:
            return f"{name}: {problem}"
    return None


def _check_value(value: Any, rule: ArgSpec) -> str | None:
    kinds: dict[str, type[Any]] = {"string": str, "integer": int, "boolean": bool, "array": list}
    if not isinstance(value, kinds[rule.type]) or (rule.type == "integer" and
                                                    isinstance(value, bool)):
        return f"must be a {rule.type}"
    if rule.type == "string" and (not value or "\x00" in value or
                                  (rule.max_length and len(value) > rule.max_length)):
        return "must be a non-empty string without NUL, within the length limit"
    if rule.type == "string" and rule.format:
        problem = _check_format(value, rule.format)
        if problem:
            return problem
    if rule.type == "array":
        if rule.min_items is not None and len(value) < rule.min_items:
            return f"needs at least {rule.min_items} item(s)"
        if rule.max_items is not None and len(value) > rule.max_items:
            return f"takes at most {rule.max_items} item(s)"
        item = ArgSpec(type=rule.items or "string", max_length=4096, format=rule.format)
        for i, v in enumerate(value):
            problem = _check_value(v, item)
            if problem:
                return f"[{i}] {problem}"
    return None


def _check_format(value: str, fmt: str) -> str | None:
    """Paths are checked here as text (the agent checks them again against its disk)."""
    parts = value.split("/")
    if fmt == "name":
        if "/" in value or "\\" in value or value in (".", ".."):
            return "must be a single file name (no '/', not '.' or '..')"
        return None
    if value.startswith(("/", "~")) or "\\" in value or re.match(r"^[A-Za-z]:", value):
        return "must be a path relative to the agent's root (P_ABSOLUTE)"
    if ".." in parts:
        return "must not leave the agent's root with '..' (P_TRAVERSAL)"
    return None


def approver_refusal(approver: str, approver_roles: Iterable[str], requester: str,
                     profile: ActionProfile, agents: Iterable[str] = (),
                     executor_role: str | None = None) -> str | None:
    """The reason code an approval by `approver` must be refused with, or None: nobody
    approves their own request, and no executor (by identity or by role) approves at all."""
    if approver == requester or approver in set(agents) or \
            (executor_role is not None and executor_role in set(approver_roles)):
        return "G_SOD_VIOLATION"
    if not set(approver_roles) & set(profile.approvers):
        return "G_ROLE_DENIED"
    return None


def decide(action: str, args: Any, *, contract: Contract | None, requester: str,
           roles: Iterable[str], now: datetime, approvals: Iterable[Approval] = (),
           agents: Iterable[str] = ()) -> Decision:
    """ALLOW, DENY or PENDING_APPROVAL for `requester` asking for `action` with `args`."""
    if contract is None:
        return Decision("DENY", "G_NO_CONTRACT", "no active contract for this tenant", action)
    name = canonical_action(action, contract)
    ref = contract.ref
    if name is None or name not in contract.actions:
        return Decision("DENY", "G_UNKNOWN_ACTION", f"{ref} has no action {action!r}",
                        action, ref)
    profile = contract.actions[name]
    if not set(roles) & set(profile.requesters):
        return Decision("DENY", "G_ROLE_DENIED", f"{name} may be requested by "
                        f"{', '.join(profile.requesters)}", name, ref)
    problem = check_args(args, profile.args)
    if problem:
        return Decision("DENY", "G_BAD_ARGUMENTS", problem, name, ref)
    if profile.approvals == 0:
        return Decision("ALLOW", "G_OK", "allowed without approval", name, ref)
    return _with_approvals(name, ref, profile, requester, list(approvals), now, set(agents),
                           contract.executor_role)


def _with_approvals(name: str, ref: str, profile: ActionProfile, requester: str,
                    approvals: list[Approval], now: datetime, agents: set[str],
                    executor_role: str | None) -> Decision:
    valid = [a for a in approvals if approver_refusal(
        a.approver, a.approver_roles, requester, profile, agents, executor_role) is None]
    if any(not a.approve for a in valid):
        return Decision("DENY", "G_REJECTED", "an approver rejected this request", name, ref,
                        0, profile.approvals)
    ttl = timedelta(seconds=profile.approval_ttl_s)
    fresh = {a.approver for a in valid if a.at + ttl > now}
    expired = {a.approver for a in valid if a.at + ttl <= now} - fresh
    required = profile.approvals
    if len(fresh) >= required:
        return Decision("ALLOW", "G_APPROVED", f"approved by {len(fresh)} of {required} "
                        "required approver(s)", name, ref, len(fresh), required)
    if expired:
        return Decision("PENDING_APPROVAL", "G_APPROVAL_EXPIRED", f"{len(expired)} approval(s) "
                        f"expired after {profile.approval_ttl_s}s; approve again", name, ref,
                        len(fresh), required)
    return Decision("PENDING_APPROVAL", "G_APPROVAL_REQUIRED", f"needs {required - len(fresh)}"
                    " more approval(s) by someone other than the requester", name, ref,
                    len(fresh), required)
