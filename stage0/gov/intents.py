"""Chat-style command entry: a short sentence to a governed action, deterministically.

Each action of an active contract may declare `phrases` ("delete duplicates in {path}").
A sentence matches a phrase when its words match the phrase's words (case-insensitive,
extra spaces and a final period ignored) and each {slot} takes a value: one word or a
"quoted string"; an array slot takes a list ("a.jpg, b.jpg and c.jpg"). Nothing here
decides: the parsed action goes through the gate like any other proposal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stage0.gov.contracts import Contract

_SLOT = re.compile(r"\{(\w+)\}")
_ONE = r'(?:"[^"]+"|\S+)'


@dataclass(frozen=True)
class Intent:
    contract: str
    action: str
    args: dict[str, Any]
    phrase: str

    @property
    def qualified(self) -> str:
        return f"{self.contract}.{self.action}"


def _pattern(phrase: str, contract: Contract, action: str) -> re.Pattern[str]:
    parts = []
    for i, piece in enumerate(_SLOT.split(phrase.strip())):
        if i % 2:
            many = contract.actions[action].args[piece].type == "array"
            parts.append(f"(?P<{piece}>{_ONE}(?:(?:\\s*,\\s*|\\s+and\\s+|\\s+){_ONE})*)"
                         if many else f"(?P<{piece}>{_ONE})")
        else:
            parts.append(r"\s+".join(re.escape(w) for w in piece.split()))
    body = ""
    for part in parts:
        if body and part:
            body += r"\s+"
        body += part
    return re.compile(rf"^\s*{body}\s*\.?\s*$", re.IGNORECASE)


def _value(raw: str) -> str:
    value = raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw
    return value.rstrip("/") or value


def _values(raw: str) -> list[str]:
    return [_value(w) for w in re.findall(r'"[^"]+"|[^\s,]+', raw) if w.lower() != "and"]


def parse(text: str, contracts: list[Contract]) -> Intent | None:
    """The matching phrase with the most literal text (so "delete duplicates in {path}"
    wins over "delete {paths}"); ties go to the first declared."""
    best: tuple[int, Intent] | None = None
    for contract in contracts:
        for action, profile in contract.actions.items():
            for phrase in profile.phrases:
                match = _pattern(phrase, contract, action).match(text)
                if match is None:
                    continue
                weight = len(_SLOT.sub("", phrase).replace(" ", ""))
                if best is not None and best[0] >= weight:
                    continue
                args: dict[str, Any] = {}
                for slot, raw in match.groupdict().items():
                    many = profile.args[slot].type == "array"
                    args[slot] = _values(raw) if many else _value(raw)
                best = (weight, Intent(contract.name, action, args, phrase))
    return best[1] if best else None


def examples(contracts: list[Contract]) -> list[str]:
    """One phrase per action, sorted (a contract's action order is not preserved in jsonb)."""
    return sorted(a.phrases[0] for c in contracts for a in c.actions.values() if a.phrases)
