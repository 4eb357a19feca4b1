"""ROW/kernels and ROW/policies are generated from kernels/: they must not drift."""

from stage0.ledger import kernel_rows


def test_rows_match_kernel_sources():
    stale = [str(path) for path, text in kernel_rows.build().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `python tools/build_rows.py`: {stale}"


def test_every_kernel_in_the_manifest_has_a_source():
    import json

    manifest = json.loads((kernel_rows.ROW / "manifest" / "manifest.ndjson").read_text())
    built = {json.loads(text)["id"] for text in kernel_rows.build().values()}
    assert set(manifest["metadata"]["allowed_boot_ids"]) <= built
