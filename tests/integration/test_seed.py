"""`logline seed` semantics (issue 2, item 6) and `logline spans` (item 7).

Unsigned rows are signed by the operator at seed time; re-seeding identical content is a no-op;
changed content appends the next seq chained to the previous one; a file is all-or-nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from helpers.ledger import count_spans, write_rows

from stage0.ledger import seed, store
from stage0.ledger.manifest import MANIFEST_ID
from stage0.spans.canonical import normalise
from stage0.spans.proofs import check_proofs, public_key_hex


def row(**fields: Any) -> dict[str, Any]:
    base = {"id": str(uuid.uuid4()), "entity_type": "widget", "who": "tester", "did": "made",
            "this": "a widget", "owner_id": "user-1", "tenant_id": "tenant-1",
            "status": "active"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def spans_json(cli, *args: str) -> list[dict[str, Any]]:
    proc = cli("spans", "--json", *args)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_unsigned_rows_are_signed_by_the_operator_at_seed_time(seeded, operator, tmp_path):
    rows = [row(), row(at="2024-02-29T23:59:59.999Z")]
    path = write_rows(tmp_path / "w.ndjson", rows)
    with seeded.connect("kernel") as conn:
        [result] = seed.seed(conn, [path], operator)
        stored = [store.head(conn, r["id"]) for r in rows]
    assert (result.appended, result.unchanged) == (2, 0)
    for span in stored:
        assert span["seq"] == 0 and span["prev_hash"] is None
        assert span["public_key"] == public_key_hex(operator)
        assert check_proofs(normalise(span)).ok
        assert span["at"]  # the seed stamps a time on rows without one
    assert stored[1]["at"] == "2024-02-29T23:59:59.999Z"  # and keeps the one a row carries
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)  # file untouched


def test_reseeding_identical_content_is_a_noop(cli, seeded, tmp_path):
    path = write_rows(tmp_path / "w.ndjson", [row(), row()])
    first = cli("seed", str(path)).stdout
    assert "2 appended, 0 unchanged" in first
    before = count_spans(seeded)

    again = cli("seed", str(path)).stdout

    assert "0 appended, 2 unchanged" in again
    assert "0 span(s) appended" in again
    assert count_spans(seeded) == before


def test_reseeding_row_is_a_noop(cli, seeded):
    before = count_spans(seeded)
    out = cli("seed").stdout
    assert "manifest.ndjson: 0 appended" in out
    assert count_spans(seeded) == before


def test_changed_content_appends_the_next_seq_chained_to_the_previous(seeded, operator,
                                                                      tmp_path):
    widget = row()
    path = write_rows(tmp_path / "w.ndjson", [widget])
    with seeded.connect("kernel") as conn:
        seed.seed(conn, [path], operator)
        write_rows(path, [{**widget, "status": "retired"}])
        [result] = seed.seed(conn, [path], operator)
        write_rows(path, [{**widget, "status": "retired", "metadata": {"v": 3}}])
        seed.seed(conn, [path], operator)
        seed.seed(conn, [path], operator)  # unchanged again: nothing more
        versions = store.versions(conn, widget["id"])
    assert result.appended == 1
    assert [v["seq"] for v in versions] == [0, 1, 2]
    assert [v["status"] for v in versions] == ["active", "retired", "retired"]
    assert versions[1]["prev_hash"] == versions[0]["curr_hash"]
    assert versions[2]["prev_hash"] == versions[1]["curr_hash"]
    assert versions[2]["metadata"] == {"v": 3}


def test_a_file_is_all_or_nothing_and_the_error_names_file_and_line(cli, seeded, tmp_path):
    good = [row(), row()]
    path = tmp_path / "w.ndjson"
    path.write_text(json.dumps(good[0]) + "\n\n" + json.dumps(good[1]) + "\n"
                    + json.dumps(row(visibility="everyone")) + "\n")
    before = count_spans(seeded)

    proc = cli("seed", str(path), check=False)

    assert proc.returncode == 2
    # The bad row is the third row but the fourth line (a blank line counts).
    assert f"{path}:4: visibility: SPAN_INVALID_VISIBILITY" in proc.stderr
    assert count_spans(seeded) == before
    assert spans_json(cli, "--entity-type", "widget") == []


def test_files_are_independent_units(cli, seeded, tmp_path):
    """A file is all-or-nothing: the bad file leaves nothing, files named before it stay."""
    ok = write_rows(tmp_path / "a_ok.ndjson", [row(entity_type="gadget")])
    bad = write_rows(tmp_path / "b_bad.ndjson", [row(entity_type="gadget"), {"id": "x"}])
    before = count_spans(seeded)
    proc = cli("seed", str(ok), str(bad), check=False)
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr
    assert count_spans(seeded) == before + 1
    assert [s["id"] for s in spans_json(cli, "--entity-type", "gadget")] == [
        json.loads(ok.read_text())["id"]]


def test_a_failed_seed_reports_the_files_it_did_append(cli, tmp_path):
    ok = write_rows(tmp_path / "a_ok.ndjson", [row()])
    bad = write_rows(tmp_path / "b_bad.ndjson", [{"id": "x"}])
    proc = cli("seed", str(ok), str(bad), check=False)
    assert proc.returncode == 2
    assert f"{ok}: 1 appended" in proc.stdout


def test_seed_of_a_directory_takes_ndjson_files_only(cli, tmp_path):
    folder = tmp_path / "rows"
    (folder / "sub").mkdir(parents=True)
    wanted = [row(), row()]
    write_rows(folder / "one.ndjson", wanted[:1])
    write_rows(folder / "sub" / "two.ndjson", wanted[1:])
    (folder / "notes.txt").write_text("not a row\n")
    out = cli("seed", str(folder)).stdout
    assert "2 span(s) appended from 2 file(s)" in out
    assert {s["id"] for s in spans_json(cli, "--entity-type", "widget")} == {
        r["id"] for r in wanted}


def test_spans_lists_what_was_seeded(cli, tmp_path):
    widgets = [row(this=f"widget {i}") for i in range(3)]
    cli("seed", str(write_rows(tmp_path / "w.ndjson", widgets)))
    listed = spans_json(cli, "--entity-type", "widget")
    assert {s["id"] for s in listed} == {w["id"] for w in widgets}
    by_id = {s["id"]: s for s in listed}
    for w in widgets:
        span = by_id[w["id"]]
        assert {k: span[k] for k in w} == w
        assert check_proofs(normalise(span)).ok  # the JSON output is the span, proofs and all
    assert [s["id"] for s in listed] == [w["id"] for w in reversed(widgets)]  # newest first


def test_spans_shows_the_latest_version_only(cli, tmp_path):
    widget = row()
    path = write_rows(tmp_path / "w.ndjson", [widget])
    cli("seed", str(path))
    write_rows(path, [{**widget, "this": "renamed"}])
    cli("seed", str(path))
    [span] = spans_json(cli, "--entity-type", "widget")
    assert (span["seq"], span["this"]) == (1, "renamed")


def test_spans_limit(cli, tmp_path):
    cli("seed", str(write_rows(tmp_path / "w.ndjson", [row() for _ in range(5)])))
    assert len(spans_json(cli, "--entity-type", "widget", "--limit", "2")) == 2
    assert len(spans_json(cli, "--entity-type", "widget")) == 5


def test_spans_filters_by_tenant_and_status(cli, tmp_path):
    rows = [row(tenant_id="t-a", status="active"), row(tenant_id="t-a", status="draft"),
            row(tenant_id="t-b", status="active")]
    cli("seed", str(write_rows(tmp_path / "w.ndjson", rows)))

    def ids(*args: str) -> set[str]:
        return {s["id"] for s in spans_json(cli, "--entity-type", "widget", *args)}

    assert ids("--tenant", "t-a") == {rows[0]["id"], rows[1]["id"]}
    assert ids("--status", "active") == {rows[0]["id"], rows[2]["id"]}
    assert ids("--tenant", "t-a", "--status", "active") == {rows[0]["id"]}
    assert ids("--tenant", "nobody") == set()
    # The manifest seeded from ROW/ is found by its own filters.
    assert [s["id"] for s in spans_json(cli, "--entity-type", "manifest", "--tenant",
                                        "system")] == [MANIFEST_ID]


def test_spans_table_output(cli, tmp_path, monkeypatch):
    widget = row(this="shown in the table")
    cli("seed", str(write_rows(tmp_path / "w.ndjson", [widget])))
    monkeypatch.setenv("COLUMNS", "200")
    out = cli("spans", "--entity-type", "widget").stdout
    assert widget["id"] in out and "shown in the table" in out


def test_spans_table_keeps_ids_whole_at_80_columns(cli, tmp_path, monkeypatch):
    widget = row()
    cli("seed", str(write_rows(tmp_path / "w.ndjson", [widget])))
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("spans", "--entity-type", "widget").stdout
    assert widget["id"] in out


def test_spans_refuses_a_negative_limit(cli):
    proc = cli("spans", "--limit", "-1", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "limit" in proc.stderr


def test_two_versions_of_one_id_in_one_file(cli, seeded, tmp_path):
    """A file holding two versions of one id either is refused or re-seeds as a no-op."""
    widget = row()
    path = write_rows(tmp_path / "w.ndjson", [widget, {**widget, "status": "retired"}])
    first = cli("seed", str(path), check=False)
    if first.returncode != 0:
        assert first.returncode == 2 and str(path) in first.stderr
        return
    before = count_spans(seeded)
    again = cli("seed", str(path)).stdout
    assert "0 span(s) appended" in again
    assert count_spans(seeded) == before
    [head] = spans_json(cli, "--entity-type", "widget")
    assert head["status"] == "retired"

