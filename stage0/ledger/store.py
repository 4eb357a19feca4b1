"""Appending to and reading from the ledger: the one write path every caller goes through.

append() normalises, chains (seq and prev_hash from the current head), hashes and signs each
unsigned span, checks the proofs and trust of spans that arrive signed, and inserts them in one
transaction. PostgreSQL re-checks the chain (ledger.on_append) so no caller can fork a span.
Chaining is optimistic: the heads are read without a lock, and on a concurrent append to the
same id the batch is re-chained and re-signed. A small batch is first sent as if its ids were
new, in an INSERT that stores nothing and returns the heads if one exists (one round trip for
new ids, the common case; two, as before, for a next version, unless this connection appended
the version before: it remembers the heads it wrote, and the INSERT then stores the rows only
if those heads are still current). A large batch is signed while
it is COPYed, so PostgreSQL inserts the rows already sent while this process signs the next
ones; the append lock (taken with the first row) is then held for the batch's signing time as
well, which is about its insert time, the two running side by side.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from nacl.signing import SigningKey
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from stage0.errors import LoglineError
from stage0.ledger.db import Connection, db_error, one
from stage0.ledger.queries import q
from stage0.spans.canonical import (
    _UUID,
    FIELDS,
    JSON_FIELDS,
    format_at,
    normalise,
    normalise_checked,
    now_at,
)
from stage0.spans.proofs import check_proofs, seal_encoded

_COPY = f"COPY ledger.universal_registry ({', '.join(FIELDS)}) FROM STDIN"
CHAIN_CODES = ("LEDGER_SEQ_CONFLICT", "LEDGER_PREV_HASH_MISMATCH", "LEDGER_SEQ_GAP")
MAX_CHAIN_RETRIES = 5
SMALL_BATCH = 32
INSERT_CHUNK = 500  # 500 rows x 30 columns stays under PostgreSQL's 65,535 parameters
_TYPES = {"id": "uuid", "parent_id": "uuid", "seq": "integer", "duration_ms": "integer",
          "at": "timestamptz", "related_to": "uuid[]", "is_deleted": "boolean",
          **{f: "jsonb" for f in JSON_FIELDS}}


def span_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row (as selected with queries.SPAN_COLUMNS) back to a normalised span."""
    span = {f: row[f] for f in FIELDS}
    for f in ("id", "parent_id"):
        if span[f] is not None:
            span[f] = str(span[f])
    if span["related_to"] is not None:
        span["related_to"] = [str(u) for u in span["related_to"]]
    if isinstance(span["at"], datetime):
        span["at"] = format_at(span["at"])
    return span


def is_signed(span: Mapping[str, Any]) -> bool:
    return span.get("signature") is not None


def prepare(raw: Mapping[str, Any], heads: dict[str, tuple[int, str]],
            key: SigningKey, trusted: frozenset[str] | None) -> dict[str, Any]:
    """One span ready to insert. `heads` (id -> (seq, curr_hash)) is advanced in place so a
    batch may carry several versions of one id."""
    return _prepare(raw, heads, key, trusted)[0]


def _prepare(raw: Mapping[str, Any], heads: dict[str, tuple[int, str]], key: SigningKey,
             trusted: frozenset[str] | None) -> tuple[dict[str, Any], list[Any]]:
    """prepare(), and the span's column values for COPY/INSERT."""
    texts = None
    if is_signed(raw):
        span = normalise(raw)
        check = check_proofs(span)
        if not check.ok:
            raise LoglineError(check.reason or "PROOF_INVALID", check.detail, span["id"])
        if trusted is not None and span["public_key"] not in trusted:
            raise LoglineError("KEY_UNTRUSTED", f"signed by {span['public_key']}, which the "
                               "manifest does not trust (`logline keys trust`)", span["id"])
    else:
        draft = dict(raw)
        if "id" not in draft:
            draft["id"] = str(uuid.uuid4())
        draft["at"] = draft.get("at") or now_at()
        span_id = str(draft["id"]).lower()
        if "seq" not in draft and span_id in heads:
            draft["seq"], draft["prev_hash"] = heads[span_id][0] + 1, heads[span_id][1]
        span, general = normalise_checked(draft)
        texts = seal_encoded(span, key, general)
    heads[span["id"]] = (span["seq"], span["curr_hash"])
    # normalise() builds the span in FIELDS order, so its values are the columns in order.
    return span, _values(list(span.values()), texts)


def _values(row: list[Any], texts: dict[str, str] | None) -> list[Any]:
    """Column values in FIELDS order -> what COPY/INSERT is given. A JSON column gets the JSON
    text that was hashed when there is one (sorted, compact; jsonb parses it to the same
    value, and it saves serialising the value a second time), else the value as Jsonb (a
    float keeps its own digits that way: 1.0 reads back as 1.0)."""
    for i, field in _JSON_COLUMNS:
        value = row[i]
        if value is not None:
            row[i] = texts[field] if texts is not None else Jsonb(value)
    related = row[_RELATED]
    if type(related) is list and all(type(u) is str and _UUID.fullmatch(u) for u in related):
        row[_RELATED] = "{" + ",".join(related) + "}"  # uuid[] as its literal: nothing to quote
    return row


_JSON_COLUMNS = tuple((i, f) for i, f in enumerate(FIELDS) if f in JSON_FIELDS)
_RELATED = FIELDS.index("related_to")
#: Told how many more spans are prepared; told every PROGRESS_EVERY spans, not each one.
Progress = Callable[[int], None]
PROGRESS_EVERY = 500


def _silent(n: int) -> None:
    return None


def append(conn: Connection, spans: Sequence[Mapping[str, Any]], key: SigningKey,
           trusted: frozenset[str] | None = None,
           progress: Progress | None = None) -> list[dict[str, Any]]:
    """Append spans in one transaction (all or nothing); return them as stored.

    Unsigned spans without `seq` become the next version of their id (or seq 0 of a new id)
    and are signed with `key`. Signed spans are stored exactly as given after their hash,
    signature and (when `trusted` is given) key have been checked. `progress(n)` hears of
    spans as they are prepared and sent (a large batch takes seconds: `logline seed`'s bar).
    """
    progress = progress or _silent
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        # Inside the caller's transaction: the caller owns atomicity (and any retry), and a
        # savepoint per append would cost two round trips on the hot path. Everything is
        # prepared before anything is sent, so a refused span leaves that transaction usable.
        if _small(conn, spans):
            stored = _append_small(conn, spans, key, trusted)
            progress(len(stored))
            return stored
        prepared, rows = _prepare_all(conn, spans, key, trusted, progress)
        insert(conn, prepared, rows)
        return prepared
    for attempt in range(MAX_CHAIN_RETRIES):
        try:
            return _append_once(conn, spans, key, trusted, progress)
        except LoglineError as exc:
            # Only spans we chained ourselves can be re-chained; a caller that pinned seq
            # (or signed the span) asked for exactly that version.
            retry = exc.code in CHAIN_CODES and not any(
                is_signed(s) or s.get("seq") is not None for s in spans)
            if not retry or attempt == MAX_CHAIN_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _append_once(conn: Connection, spans: Sequence[Mapping[str, Any]],
                 key: SigningKey, trusted: frozenset[str] | None,
                 progress: Progress) -> list[dict[str, Any]]:
    """One attempt of append() when the caller has no transaction open.

    The spans go in as ONE statement, a COPY or a multi-row INSERT, which is atomic by itself:
    so it runs in autocommit, without BEGIN and COMMIT round trips. Chaining is optimistic
    (the append trigger re-checks each chain under the append lock, and a conflict comes back
    as LEDGER_SEQ_CONFLICT for a retry); a small batch of new ids costs one round trip."""
    autocommit = conn.autocommit
    try:
        if not autocommit:  # setting it costs a pass through the driver's lock and wait loop
            conn.autocommit = True
        if _small(conn, spans):
            stored = _append_small(conn, spans, key, trusted)
            progress(len(stored))
            return stored
        if not _row_security(conn):
            stored = _stream(conn, spans, key, trusted, progress)
            _remember(conn, stored)
            return stored
        if conn.autocommit != autocommit:
            conn.autocommit = autocommit
        with conn.transaction():  # more rows than one INSERT takes, under row-level security
            prepared, rows = _prepare_all(conn, spans, key, trusted, progress)
            _insert_rows(conn, rows)
            return prepared
    finally:
        if conn.autocommit != autocommit and not conn.closed:  # a lost connection stays lost
            conn.autocommit = autocommit


def _small(conn: Connection, spans: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the spans go in as one INSERT: a small batch, or under row-level security
    (where PostgreSQL refuses COPY) as many as one INSERT takes."""
    return len(spans) <= SMALL_BATCH or (len(spans) <= INSERT_CHUNK and _row_security(conn))


def _append_small(conn: Connection, spans: Sequence[Mapping[str, Any]],
                  key: SigningKey, trusted: frozenset[str] | None) -> list[dict[str, Any]]:
    """Up to INSERT_CHUNK spans in one INSERT, chained to the heads this connection last
    wrote for their ids (_known_heads) and as if every other id were new. The statement
    inserts them only if the ids' heads are exactly those, and returns the heads it found
    otherwise (inserting nothing): then the spans are chained to those heads, signed again
    and inserted. New ids, the common case, and next versions of spans this connection
    appended cost one round trip instead of two (heads query, INSERT); any other next version
    costs what it did, plus a signature. The guess is never trusted: the statement compares
    it with the heads, and the append trigger checks every chain under the append lock."""
    ids = sorted(set(_chained_ids(spans)))
    known = _known_heads(conn)
    expected = {i: known[i] for i in ids if i in known}
    prepared, rows = _prepare_rows(spans, dict(expected), key, trusted)
    if ids:
        try:
            found = _insert_if_new(conn, ids, rows, expected)
        except LoglineError:
            for i in ids:
                known.pop(i, None)
            raise
        if found == expected:
            _remember(conn, prepared)
            return prepared
        prepared, rows = _prepare_rows(spans, found, key, trusted)
    _insert_rows(conn, rows)
    _remember(conn, prepared)
    return prepared


#: Per connection: the heads (id -> (seq, curr_hash)) of the spans it appended last, at most
#: KNOWN_HEADS of them, oldest dropped first. A guess for the next append of those ids (a
#: request then its next status, an execution then its result): wrong, it costs the round
#: trip it would have cost anyway.
_KNOWN: weakref.WeakKeyDictionary[Connection, dict[str, tuple[int, str]]] = \
    weakref.WeakKeyDictionary()
KNOWN_HEADS = 4096


def _known_heads(conn: Connection) -> dict[str, tuple[int, str]]:
    known = _KNOWN.get(conn)
    if known is None:
        known = _KNOWN[conn] = {}
    return known


def _remember(conn: Connection, stored: Sequence[Mapping[str, Any]]) -> None:
    """Note the heads of what was stored, once it is committed: only outside a transaction
    block (inside one a rollback would make them wrong, which would cost a round trip)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return
    known = _known_heads(conn)
    for span in stored:
        known.pop(span["id"], None)  # re-inserted: the newest last
        known[span["id"]] = (span["seq"], span["curr_hash"])
    while len(known) > KNOWN_HEADS:
        del known[next(iter(known))]


def _stream(conn: Connection, spans: Sequence[Mapping[str, Any]], key: SigningKey,
            trusted: frozenset[str] | None, progress: Progress) -> list[dict[str, Any]]:
    """Prepare and COPY span by span: PostgreSQL inserts (and runs the append trigger on)
    the rows already sent while this process signs the next ones, one core each. A span
    refused here aborts the COPY, and with it everything sent."""
    heads = current_heads(conn, _chained_ids(spans))
    out = []
    try:
        with conn.cursor() as cur, cur.copy(_COPY) as copy:
            for span, row in _each_prepared(spans, heads, key, trusted, progress):
                copy.write_row(row)
                out.append(span)
    except psycopg.Error as exc:
        raise db_error(exc) from None
    return out


def _each_prepared(spans: Sequence[Mapping[str, Any]], heads: dict[str, tuple[int, str]],
                   key: SigningKey, trusted: frozenset[str] | None,
                   progress: Progress | None = None) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """(span, COPY row) for each draft, in order; a refusal names the span's index."""
    for i, raw in enumerate(spans):
        try:
            yield _prepare(raw, heads, key, trusted)
        except LoglineError as exc:
            raise (exc.at(f"span[{i}]") if len(spans) > 1 else exc) from None
        if progress is not None and i % PROGRESS_EVERY == PROGRESS_EVERY - 1:
            progress(PROGRESS_EVERY)
    if progress is not None and len(spans) % PROGRESS_EVERY:
        progress(len(spans) % PROGRESS_EVERY)


def _chained_ids(spans: Sequence[Mapping[str, Any]]) -> list[str]:
    # Only well-formed ids go to the database; a malformed one fails in normalise() later
    # with SPAN_INVALID_UUID naming the field, not as a database error.
    return [str(s["id"]).lower() for s in spans
            if isinstance(s.get("id"), str) and _UUID.fullmatch(s["id"])
            and "seq" not in s and not is_signed(s)]


def _prepare_all(conn: Connection, spans: Sequence[Mapping[str, Any]], key: SigningKey,
                 trusted: frozenset[str] | None, progress: Progress | None = None
                 ) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    return _prepare_rows(spans, current_heads(conn, _chained_ids(spans)), key, trusted,
                         progress)


def _prepare_rows(spans: Sequence[Mapping[str, Any]], heads: dict[str, tuple[int, str]],
                  key: SigningKey, trusted: frozenset[str] | None,
                  progress: Progress | None = None) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    out, rows = [], []
    for span, row in _each_prepared(spans, heads, key, trusted, progress):
        out.append(span)
        rows.append(row)
    return out, rows


def current_heads(conn: Connection, ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    ids = list(set(ids))
    if not ids:
        return {}
    return {r["id"]: (r["seq"], r["curr_hash"]) for r in conn.execute(q("heads_for"),
                                                                        {"ids": ids})}


def _copy_value(field: str, value: Any) -> Any:
    return Jsonb(value) if field in JSON_FIELDS and value is not None else value


def insert(conn: Connection, spans: Sequence[Mapping[str, Any]],
           rows: Sequence[list[Any]] | None = None) -> None:
    """Insert prepared spans: one multi-row INSERT for small batches (one round trip), COPY
    for large ones. The triggers check every row either way. `rows` are the spans' column
    values when the caller has them (append's _prepare)."""
    if rows is None:
        rows = [_values([span[f] for f in FIELDS], None) for span in spans]
    try:
        if len(rows) <= SMALL_BATCH or _row_security(conn):
            _insert_rows(conn, rows)
            return
        with conn.cursor() as cur, cur.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise db_error(exc) from None


def _insert_rows(conn: Connection, rows: Sequence[list[Any]]) -> None:
    # PostgreSQL refuses COPY FROM under row-level security: the app role inserts.
    try:
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start:start + INSERT_CHUNK]
            conn.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])
    except psycopg.Error as exc:
        raise db_error(exc) from None


def _insert_if_new(conn: Connection, ids: list[str], rows: Sequence[list[Any]],
                   expected: Mapping[str, tuple[int, str]] | None = None
                   ) -> dict[str, tuple[int, str]]:
    """INSERT `rows` (at most INSERT_CHUNK) only if the heads of `ids` are exactly `expected`
    (id -> (seq, curr_hash); an id not in it must have no head: by default, all are new);
    return the heads found, which equal `expected` when the rows were inserted. One
    statement: atomic, and no error when the heads differ."""
    expected = expected or {}
    if len(ids) == 1:  # the parameters in the statement's order: ids, rows, expected heads
        seq, curr_hash = expected.get(ids[0], (-1, ""))
        first: Any = ids[0]
        heads: list[Any] = [seq, curr_hash]
    else:
        first = ids
        heads = [list(expected), [h[0] for h in expected.values()],
                 [h[1] for h in expected.values()]]
    try:
        with conn.cursor(row_factory=tuple_row) as cur:
            found = cur.execute(_insert_if_new_sql(len(rows), len(ids) == 1),
                                [first, *(v for row in rows for v in row), *heads]).fetchall()
    except psycopg.Error as exc:
        raise db_error(exc) from None
    return {span_id: (seq, curr_hash) for span_id, seq, curr_hash in found}


_RLS: weakref.WeakKeyDictionary[Connection, bool] = weakref.WeakKeyDictionary()


def _row_security(conn: Connection) -> bool:
    if conn not in _RLS:
        _RLS[conn] = one(conn.execute(q("row_security_active")))["on"]
    return _RLS[conn]


# The only SQL built at run time (every other statement is named in stage0/ledger/sql/):
# the INSERTs' multi-row VALUES lists, for a number of rows, and the COPY (_COPY above), from
# the span's fields.
@cache
def _values_sql(rows: int) -> str:
    casts = ", ".join(f"%s::{_TYPES.get(f, 'text')}" for f in FIELDS)
    return "VALUES " + ", ".join(f"({casts})" for _ in range(rows))


_TABLE = f"ledger.universal_registry ({', '.join(FIELDS)})"


@cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO {_TABLE} {_values_sql(rows)}"


@cache
def _insert_if_new_sql(rows: int, one_id: bool) -> str:
    # `known` is read once (a CTE referenced several times is materialised); under row-level
    # security it holds the heads the caller may read, as current_heads() does. One id is
    # compared as a scalar, its expected head as (seq, hash), (-1, '') for none: PostgreSQL
    # then keeps the prepared statement's generic plan, where for `= ANY(array)` it would
    # plan every execution again (~80 us). Several ids: the expected heads as three arrays,
    # and any head that is not expected, or expected and not found, or different, stops it.
    if one_id:
        match = "id = %s::uuid"
        same = ("coalesce((SELECT seq FROM known), -1) = %s::integer "
                "AND coalesce((SELECT curr_hash FROM known), '') = %s::text")
    else:
        match = "id = ANY(%s::uuid[])"
        same = ("NOT EXISTS (SELECT FROM known k FULL JOIN unnest(%s::text[], %s::integer[], "
                "%s::text[]) AS e(id, seq, curr_hash) ON e.id = k.id WHERE k.id IS NULL "
                "OR e.id IS NULL OR k.seq <> e.seq OR k.curr_hash <> e.curr_hash)")
    return (f"WITH known AS (SELECT id::text, seq, curr_hash FROM ledger.span_heads "
            f"WHERE {match}), "
            f"stored AS (INSERT INTO {_TABLE} SELECT * FROM ({_values_sql(rows)}) AS v "
            f"WHERE {same}) "
            f"SELECT id, seq, curr_hash FROM known")


def head(conn: Connection, span_id: str) -> dict[str, Any] | None:
    row = conn.execute(q("head_lookup"), {"id": span_id}).fetchone()
    return span_from_row(row) if row else None


def heads(conn: Connection, span_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The latest versions of several spans, by id, in one round trip (absent ids left out)."""
    ids = list(span_ids)
    rows = conn.execute(q("two_heads"), {"a": ids[0], "b": ids[1]}) if len(ids) == 2 else \
        conn.execute(q("heads_of"), {"ids": ids})
    return {str(r["id"]): span_from_row(r) for r in rows}


def versions(conn: Connection, span_id: str) -> list[dict[str, Any]]:
    return [span_from_row(r) for r in conn.execute(q("all_versions"), {"id": span_id})]
