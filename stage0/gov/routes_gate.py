"""The gate for HTTP routes and the roles a caller has: every API call is an action of the
platform's api contract, decided by the same gate as governed actions."""

from __future__ import annotations

from datetime import UTC, datetime

from stage0.gov import gate
from stage0.gov.apikeys import Principal
from stage0.gov.contracts import Contract

#: Roles every caller has: `anyone`, and `member` for a caller with a valid key.
IMPLICIT_ROLES = ("anyone", "member")


def roles_of(principal: Principal | None) -> tuple[str, ...]:
    if principal is None:
        return ("anyone",)
    return (*principal.roles, *IMPLICIT_ROLES)


def now() -> datetime:
    return datetime.now(UTC)


def route_decision(contract: Contract | None, action: str,
                   principal: Principal | None) -> gate.Decision:
    """The gate's answer for one HTTP route (arguments are the route's own business)."""
    if contract is not None and action.partition(".")[2] not in contract.actions:
        return gate.Decision("DENY", "G_NO_PROFILE", f"the route's action {action} has no "
                             "profile in the api contract", action, contract.ref)
    return gate.decide(action, {}, contract=contract,
                       requester=principal.user_id if principal else "anonymous",
                       roles=roles_of(principal), now=now())
