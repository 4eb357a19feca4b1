"""The governed agent's file operations: confined to the root, nothing lost, races refused.

Real directories under tmp_path: `root` is the agent's root, `outside` a sibling directory that
no operation may ever read into a result or change (checked after every test).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import blake3
import pytest

from stage0.agent.fsops import TRASH_DIR, FsRefused, Root


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def snapshot(base: Path) -> dict[str, tuple]:
    """Everything under base, without following symlinks: type, content, link target, inode."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(base))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture
def outside(tmp_path):
    out = tmp_path / "outside"
    (out / "photos").mkdir(parents=True)
    (out / "secret.txt").write_bytes(b"outside secret")
    (out / "photos" / "a.jpg").write_bytes(b"JPEG-A")  # same content as root's photos/a.jpg
    before = snapshot(out)
    yield out
    assert snapshot(out) == before, "something outside the root was changed"


@pytest.fixture
def rootdir(tmp_path, outside):
    r = tmp_path / "root"
    (r / "photos" / "2024").mkdir(parents=True)
    (r / "docs").mkdir()
    (r / "photos" / "a.jpg").write_bytes(b"JPEG-A")
    (r / "photos" / "b.jpg").write_bytes(b"JPEG-B")
    (r / "photos" / "2024" / "copy-of-a.jpg").write_bytes(b"JPEG-A")
    (r / "docs" / "notes.txt").write_bytes(b"notes")
    return r


@pytest.fixture
def root(rootdir):
    with Root(rootdir) as r:
        yield r


def refused(code: str, where: str | None = None):
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(FsRefused)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            swallowed = self.ctx.__exit__(*exc)
            assert self.info.value.code == code, str(self.info.value)
            if where is not None:
                assert self.info.value.where == where, str(self.info.value)
            return swallowed
    return Check()


def trash_entries(rootdir: Path) -> list[dict]:
    t = rootdir / TRASH_DIR
    return [json.loads(p.read_text()) for p in sorted(t.glob("*.json"))] if t.exists() else []


# --- confinement: every kind of path escape has its own code ----------------------------

ESCAPES = [
    ("/etc/passwd", "P_ABSOLUTE"),
    ("~/secret", "P_ABSOLUTE"),
    ("~", "P_ABSOLUTE"),
    ("C:/Windows", "P_ABSOLUTE"),
    ("C:\\Windows", "P_ABSOLUTE"),
    ("\\\\server\\share", "P_ABSOLUTE"),
    ("../outside/secret.txt", "P_TRAVERSAL"),
    ("photos/../../outside/secret.txt", "P_TRAVERSAL"),
    ("photos/..", "P_TRAVERSAL"),
    ("photos//..//..//outside", "P_TRAVERSAL"),
    ("photos/a.jpg\x00.txt", "P_TRAVERSAL"),
    (TRASH_DIR, "P_IN_TRASH"),
    (f"{TRASH_DIR}/x/photos/a.jpg", "P_IN_TRASH"),
    (f"./{TRASH_DIR}/", "P_IN_TRASH"),
    ("", "P_BAD_PATH"),
    ("a" * 5000, "P_BAD_PATH"),
]


@pytest.mark.parametrize("path,code", ESCAPES)
def test_escaping_paths_are_refused_with_their_code(root, path, code):
    with refused(code):
        root.list_files(path)
    with refused(code):
        root.plan("delete", {"paths": [path]})
    with refused(code):
        root.plan("move", {"paths": ["photos/a.jpg"], "destination": path})
    assert root.restore([path])[0]["code"] == code


def test_a_path_that_is_not_a_string_is_refused(root):
    with refused("P_BAD_PATH"):
        root.list_files(5)  # type: ignore[arg-type]
    with refused("P_BAD_PATH"):
        root.plan("delete", {"paths": [None]})


def test_refusal_names_the_offending_path(root):
    with refused("P_TRAVERSAL", "photos/../../outside/secret.txt"):
        root.plan("delete", {"paths": ["photos/a.jpg", "photos/../../outside/secret.txt"]})
    with refused("P_NOT_FOUND", "photos/zzz.jpg"):
        root.plan("delete", {"paths": ["photos/zzz.jpg"]})


def test_symlinks_are_refused_anywhere_even_pointing_inside(root, rootdir, outside):
    (rootdir / "escape").symlink_to(outside)
    (rootdir / "inside").symlink_to(rootdir / "photos")
    (rootdir / "docs" / "link.txt").symlink_to(outside / "secret.txt")
    with refused("P_SYMLINK", "escape"):
        root.list_files("escape")
    with refused("P_SYMLINK"):
        root.plan("delete", {"paths": ["escape/secret.txt"]})
    with refused("P_SYMLINK"):
        root.plan("delete", {"paths": ["inside/a.jpg"]})
    with refused("P_SYMLINK", "docs/link.txt"):
        root.plan("delete", {"paths": ["docs/link.txt"]})
    with refused("P_SYMLINK"):
        root.plan("move", {"paths": ["docs/notes.txt"], "destination": "escape"})
    with refused("P_SYMLINK"):
        root.plan("rename", {"path": "inside/b.jpg", "new_name": "c.jpg"})


def test_listing_never_follows_symlinks_nor_reports_anything_outside(root, rootdir, outside):
    (rootdir / "escape").symlink_to(outside)
    (rootdir / "docs" / "link.txt").symlink_to(outside / "secret.txt")
    os.mkfifo(rootdir / "docs" / "pipe")  # would block a naive reader
    listed = root.list_files(".")
    assert [f["path"] for f in listed] == [
        "docs/notes.txt", "photos/2024/copy-of-a.jpg", "photos/a.jpg", "photos/b.jpg"]
    assert b3(b"outside secret") not in {f["blake3"] for f in listed}
    assert all(len(g["paths"]) == 2 for g in root.detect_duplicates("."))


def test_root_must_be_an_existing_directory(tmp_path):
    with refused("P_NOT_FOUND"):
        Root(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"x")
    with refused("P_NOT_A_DIR"):
        Root(tmp_path / "file")


def test_kinds_of_paths_fit_the_action(root):
    with refused("P_NOT_A_DIR", "docs/notes.txt"):
        root.list_files("docs/notes.txt")
    with refused("P_NOT_FOUND", "nothing"):
        root.list_files("nothing")
    with refused("P_NOT_A_FILE", "photos"):
        root.plan("delete", {"paths": ["photos"]})
    with refused("P_NOT_A_FILE"):
        root.plan("delete", {"paths": ["."]})
    with refused("P_NOT_A_DIR"):
        root.plan("move", {"paths": ["photos/a.jpg"], "destination": "docs/notes.txt"})


# --- reading ---------------------------------------------------------------------------

def test_list_files_recursive_sorted_with_sizes_and_hashes(root):
    assert root.list_files("photos/") == [
        {"path": "photos/2024/copy-of-a.jpg", "size": 6, "blake3": b3(b"JPEG-A")},
        {"path": "photos/a.jpg", "size": 6, "blake3": b3(b"JPEG-A")},
        {"path": "photos/b.jpg", "size": 6, "blake3": b3(b"JPEG-B")},
    ]
    assert [f["path"] for f in root.list_files(".")][0] == "docs/notes.txt"


def aged(path: Path, data: bytes, mtime: int) -> Path:
    """A file with `data`, last modified `mtime` seconds after the epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_duplicates_are_found_by_content_not_name(root, rootdir):
    (rootdir / "docs" / "a.jpg").write_bytes(b"JPEG-C")      # same name, other content
    aged(rootdir / "docs" / "renamed.bin", b"JPEG-B", 2000)  # other name, same content
    os.utime(rootdir / "photos" / "b.jpg", (1000, 1000))     # ... and older
    (rootdir / "docs" / "empty1").write_bytes(b"")             # empty files are not dupes
    (rootdir / "docs" / "empty2").write_bytes(b"")
    assert root.detect_duplicates(".") == [
        {"blake3": b3(b"JPEG-B"), "size": 6, "paths": ["docs/renamed.bin", "photos/b.jpg"],
         "keep": "photos/b.jpg"},
        {"blake3": b3(b"JPEG-A"), "size": 6,
         "paths": ["photos/2024/copy-of-a.jpg", "photos/a.jpg"], "keep": "photos/a.jpg"},
    ]
    assert root.detect_duplicates("docs") == []


def test_suggest_cleanup_keeps_the_plainly_named_copy_and_changes_nothing(root, rootdir):
    os.utime(rootdir / "photos" / "2024" / "copy-of-a.jpg", (1000, 1000))  # older, but a copy
    before = snapshot(rootdir)
    plan = root.suggest_cleanup("photos")
    assert [(op["op"], op["path"]) for op in plan] == [("trash", "photos/2024/copy-of-a.jpg")]
    st = (rootdir / "photos" / "2024" / "copy-of-a.jpg").stat()
    assert plan[0]["inode"] == [st.st_dev, st.st_ino]
    assert plan[0]["size"] == 6 and plan[0]["blake3"] == b3(b"JPEG-A")
    assert (plan[0]["duplicate_of"], plan[0]["kept_because"]) == ("photos/a.jpg", "name")
    assert snapshot(rootdir) == before


def test_the_copy_kept_is_the_plainly_named_then_the_oldest_then_the_first_by_path(root,
                                                                                 rootdir):
    d = rootdir / "keep"
    # A plain name beats an older copy-like one; "copy", "Copy of", "(1)" and "~" are copies.
    aged(d / "report.pdf", b"REPORT", 3000)
    aged(d / "report (1).pdf", b"REPORT", 1000)
    aged(d / "Copy of report.pdf", b"REPORT", 500)
    aged(d / "old copy" / "report.pdf", b"REPORT", 100)  # a folder's name counts too
    aged(d / "report.pdf~", b"REPORT", 50)
    # Among plain names, the older file stays; "copyright" is not a copy's name.
    aged(d / "x" / "copyright.txt", b"LICENSE", 3000)
    aged(d / "y" / "copyright.txt", b"LICENSE", 1000)
    # Among copies, too.
    aged(d / "b copy.txt", b"BEE", 10)
    aged(d / "b (2).txt", b"BEE", 5)
    # The same age: the first by path.
    aged(d / "m" / "n.txt", b"NNN", 7)
    aged(d / "l" / "n.txt", b"NNN", 7)
    groups = {tuple(g["paths"]): g["keep"] for g in root.detect_duplicates("keep")}
    assert sorted(groups.values()) == [
        "keep/b (2).txt", "keep/l/n.txt", "keep/report.pdf", "keep/y/copyright.txt"]
    plan = root.plan("delete_duplicates", {"path": "keep"})
    assert sorted((op["path"], op["duplicate_of"], op["kept_because"]) for op in plan) == [
        ("keep/Copy of report.pdf", "keep/report.pdf", "name"),
        ("keep/b copy.txt", "keep/b (2).txt", "older"),
        ("keep/m/n.txt", "keep/l/n.txt", "path"),
        ("keep/old copy/report.pdf", "keep/report.pdf", "name"),
        ("keep/report (1).pdf", "keep/report.pdf", "name"),
        ("keep/report.pdf~", "keep/report.pdf", "name"),
        ("keep/x/copyright.txt", "keep/y/copyright.txt", "older"),
    ]
    assert all(op["op"] == "trash" and op["to"] is None for op in plan)
    assert root.plan("delete_duplicates", {"path": "keep"}) == plan  # the same every time


# --- delete is a move into the trash; restore brings it back -----------------------------

def test_delete_duplicates_then_restore_byte_identical(root, rootdir):
    copy = "photos/2024/copy-of-a.jpg"
    plan = root.plan("delete_duplicates", {"path": "."})
    ino = (rootdir / copy).stat().st_ino
    seen = []
    results = root.execute(plan, on_op=lambda i, r: seen.append((i, r["status"])))
    assert seen == [(0, "done")]
    (res,) = results
    assert res["status"] == "done" and res["code"] is None
    assert res["blake3_before"] == res["blake3_after"] == b3(b"JPEG-A")
    assert not (rootdir / copy).exists()
    assert (rootdir / "photos" / "a.jpg").read_bytes() == b"JPEG-A"  # the copy kept
    trashed = rootdir / res["to"]
    assert res["to"].startswith(f"{TRASH_DIR}/") and res["to"].endswith(f"/{copy}")
    assert trashed.read_bytes() == b"JPEG-A" and trashed.stat().st_ino == ino  # moved, kept
    (index,) = trash_entries(rootdir)
    assert index["original"] == copy and index["blake3"] == b3(b"JPEG-A")
    assert index["size"] == 6 and index["trashed_at"].endswith("Z")
    assert [f["path"] for f in root.list_files(".")] == [
        "docs/notes.txt", "photos/a.jpg", "photos/b.jpg"]  # trash not listed
    assert [t["original"] for t in root.trashed()] == [copy]

    (back,) = root.restore([copy])
    assert back["status"] == "done" and back["blake3_after"] == b3(b"JPEG-A")
    assert (rootdir / copy).read_bytes() == b"JPEG-A"
    assert (rootdir / copy).stat().st_ino == ino
    assert trash_entries(rootdir) == [] and root.trashed() == []
    assert list((rootdir / TRASH_DIR).iterdir()) == []  # the entry's directories are gone


def test_a_duplicate_stays_when_the_copy_kept_is_gone_or_changed(root, rootdir):
    """Trashing a duplicate must never leave no copy in place: each op checks its kept copy."""
    aged(rootdir / "docs" / "b-copy.jpg", b"JPEG-B", 9)
    plan = root.plan("delete_duplicates", {"path": "."})
    assert [(op["path"], op["duplicate_of"]) for op in plan] == [
        ("docs/b-copy.jpg", "photos/b.jpg"), ("photos/2024/copy-of-a.jpg", "photos/a.jpg")]
    (rootdir / "photos" / "b.jpg").unlink()
    with open(rootdir / "photos" / "a.jpg", "r+b") as f:
        f.write(b"EDITED")
    results = root.execute(plan)
    assert [(r["path"], r["status"], r["code"]) for r in results] == [
        ("docs/b-copy.jpg", "refused", "P_CHANGED"),
        ("photos/2024/copy-of-a.jpg", "refused", "P_CHANGED")]
    assert "photos/b.jpg, is gone" in results[0]["message"]
    assert "photos/a.jpg, changed" in results[1]["message"]
    assert (rootdir / "docs" / "b-copy.jpg").read_bytes() == b"JPEG-B"
    assert (rootdir / "photos" / "2024" / "copy-of-a.jpg").read_bytes() == b"JPEG-A"
    assert root.trashed() == [] and trash_entries(rootdir) == []


def test_restore_never_overwrites_and_unknown_is_not_found(root, rootdir):
    root.execute(root.plan("delete", {"paths": ["docs/notes.txt"]}))
    (rootdir / "docs" / "notes.txt").write_bytes(b"new notes")
    (res,) = root.restore(["docs/notes.txt"])
    assert res["status"] == "refused" and res["code"] == "P_EXISTS"
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"new notes"
    assert [t["original"] for t in root.trashed()] == ["docs/notes.txt"]  # still restorable
    (res,) = root.restore(["docs/never-deleted.txt"])
    assert res["code"] == "P_NOT_FOUND"
    (rootdir / "docs" / "notes.txt").unlink()
    assert root.restore(["docs/notes.txt"])[0]["status"] == "done"
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"notes"


def test_restore_takes_the_newest_entry_and_recreates_missing_directories(root, rootdir):
    root.execute(root.plan("delete", {"paths": ["docs/notes.txt"]}))
    (rootdir / "docs" / "notes.txt").write_bytes(b"version 2")
    root.execute(root.plan("delete", {"paths": ["docs/notes.txt"]}))
    (rootdir / "docs").rmdir()
    assert root.restore(["docs/notes.txt"])[0]["status"] == "done"
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"version 2"
    (rootdir / "docs" / "notes.txt").rename(rootdir / "v2.txt")
    assert root.restore(["docs/notes.txt"])[0]["status"] == "done"
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"notes"


def test_a_file_changed_inside_the_trash_is_not_restored(root, rootdir):
    (res,) = root.execute(root.plan("delete", {"paths": ["photos/b.jpg"]}))
    (rootdir / res["to"]).write_bytes(b"tampered")
    (back,) = root.restore(["photos/b.jpg"])
    assert back["code"] == "P_CHANGED"
    assert not (rootdir / "photos" / "b.jpg").exists()


def test_a_symlinked_trash_is_refused(root, rootdir, outside):
    (rootdir / TRASH_DIR).symlink_to(outside)
    (res,) = root.execute(root.plan("delete", {"paths": ["photos/b.jpg"]}))
    assert res["code"] == "P_SYMLINK"
    assert (rootdir / "photos" / "b.jpg").read_bytes() == b"JPEG-B"


# --- move and rename -------------------------------------------------------------------

def test_move_and_rename(root, rootdir):
    plan = root.plan("move", {"paths": ["photos/a.jpg", "photos/b.jpg"], "destination": "docs"})
    assert [(op["op"], op["path"], op["to"]) for op in plan] == [
        ("move", "photos/a.jpg", "docs/a.jpg"), ("move", "photos/b.jpg", "docs/b.jpg")]
    assert [r["status"] for r in root.execute(plan)] == ["done", "done"]
    assert (rootdir / "docs" / "b.jpg").read_bytes() == b"JPEG-B"
    (res,) = root.execute(root.plan("rename", {"path": "docs/b.jpg", "new_name": "bee.jpg"}))
    assert (res["status"], res["to"]) == ("done", "docs/bee.jpg")
    assert (rootdir / "docs" / "bee.jpg").read_bytes() == b"JPEG-B"
    assert not (rootdir / "docs" / "b.jpg").exists()


def test_move_and_rename_collisions_are_refused(root, rootdir):
    (rootdir / "docs" / "b.jpg").write_bytes(b"already here")
    with refused("P_EXISTS", "docs/b.jpg"):
        root.plan("move", {"paths": ["photos/b.jpg"], "destination": "docs"})
    (rootdir / "docs" / "a.jpg").write_bytes(b"other a")
    (rootdir / "docs" / "a.jpg").rename(rootdir / "photos" / "2024" / "a.jpg")
    with refused("P_EXISTS", "docs/a.jpg"):  # two sources with one basename
        root.plan("move", {"paths": ["photos/a.jpg", "photos/2024/a.jpg"],
                           "destination": "docs"})
    with refused("P_EXISTS", "photos/b.jpg"):
        root.plan("rename", {"path": "photos/a.jpg", "new_name": "b.jpg"})
    with refused("P_EXISTS"):
        root.plan("move", {"paths": ["photos/a.jpg"], "destination": "photos"})
    assert (rootdir / "docs" / "b.jpg").read_bytes() == b"already here"


@pytest.mark.parametrize("name,code", [
    ("a/b.jpg", "P_BAD_NAME"), ("..", "P_BAD_NAME"), (".", "P_BAD_NAME"), ("", "P_BAD_NAME"),
    ("x\x00", "P_BAD_NAME"), ("n" * 256, "P_BAD_NAME"), (TRASH_DIR, "P_IN_TRASH"),
])
def test_rename_refuses_names_that_are_not_plain_names(root, rootdir, name, code):
    (rootdir / "top.txt").write_bytes(b"top")
    with refused(code):
        root.plan("rename", {"path": "top.txt", "new_name": name})


def test_a_destination_appearing_after_the_plan_is_never_overwritten(root, rootdir):
    plan = root.plan("rename", {"path": "photos/a.jpg", "new_name": "c.jpg"})
    (rootdir / "photos" / "c.jpg").write_bytes(b"arrived meanwhile")
    (res,) = root.execute(plan)
    assert (res["status"], res["code"]) == ("refused", "P_EXISTS")
    assert (rootdir / "photos" / "c.jpg").read_bytes() == b"arrived meanwhile"
    assert (rootdir / "photos" / "a.jpg").read_bytes() == b"JPEG-A"


def test_bad_plans_are_refused(root):
    with refused("P_UNKNOWN_ACTION", "format_disk"):
        root.plan("format_disk", {"path": "."})
    with refused("P_BAD_ARGS"):
        root.plan("delete", {"paths": "photos/a.jpg"})
    with refused("P_BAD_ARGS"):
        root.plan("delete", {"paths": []})
    with refused("P_BAD_ARGS", "photos/a.jpg"):
        root.plan("delete", {"paths": ["photos/a.jpg", "./photos/a.jpg"]})
    with refused("P_BAD_ARGS"):
        root.plan("rename", {"path": "photos/a.jpg"})


# --- races between plan and execution ----------------------------------------------------

def test_content_swapped_between_plan_and_execute_is_refused(root, rootdir):
    plan = root.plan("delete", {"paths": ["photos/a.jpg", "photos/b.jpg", "docs/notes.txt"]})
    # a new file (new inode) with other content of the same size...
    (rootdir / "photos" / "a.swap").write_bytes(b"EVIL-A")
    os.replace(rootdir / "photos" / "a.swap", rootdir / "photos" / "a.jpg")
    # ...and an in-place rewrite (same inode, other content)
    with open(rootdir / "photos" / "b.jpg", "r+b") as f:
        f.write(b"EVIL-B")
    results = root.execute(plan)
    assert [(r["path"], r["status"], r["code"]) for r in results] == [
        ("photos/a.jpg", "refused", "P_CHANGED"), ("photos/b.jpg", "refused", "P_CHANGED"),
        ("docs/notes.txt", "done", None)]  # a refused op does not stop the others
    assert results[0]["blake3_before"] == b3(b"EVIL-A")
    assert (rootdir / "photos" / "a.jpg").read_bytes() == b"EVIL-A"
    assert (rootdir / "photos" / "b.jpg").read_bytes() == b"EVIL-B"
    assert [t["original"] for t in root.trashed()] == ["docs/notes.txt"]
    assert len(trash_entries(rootdir)) == 1  # no index left behind for the refused ones


def test_directory_swapped_for_a_symlink_outside_is_refused(root, rootdir, outside):
    delete = root.plan("delete", {"paths": ["photos/a.jpg"]})
    move = root.plan("move", {"paths": ["docs/notes.txt"], "destination": "photos"})
    (rootdir / "photos").rename(rootdir / "photos.real")
    (rootdir / "photos").symlink_to(outside / "photos")  # outside has an identical a.jpg
    results = root.execute(delete + move)
    assert [(r["status"], r["code"]) for r in results] == [
        ("refused", "P_SYMLINK"), ("refused", "P_SYMLINK")]
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"notes"
    assert (outside / "photos" / "a.jpg").read_bytes() == b"JPEG-A"
    assert not (outside / "photos" / "notes.txt").exists()
    # the outside fixture also checks, at teardown, that nothing outside changed


def test_a_file_that_vanished_is_refused(root, rootdir):
    plan = root.plan("move", {"paths": ["photos/b.jpg"], "destination": "docs"})
    (rootdir / "photos" / "b.jpg").unlink()
    (res,) = root.execute(plan)
    assert res["code"] == "P_NOT_FOUND"


# --- ops from the server are checked, not trusted ----------------------------------------

def test_malformed_or_hostile_ops_are_refused_one_by_one(root, rootdir):
    (good,) = root.plan("delete", {"paths": ["docs/notes.txt"]})
    hostile = [
        {**good, "op": "unlink"},
        {**good, "path": "../outside/secret.txt"},
        {**good, "op": "move", "path": "photos/a.jpg", "to": "/tmp/a.jpg"},
        {**good, "op": "move", "path": "photos/a.jpg", "to": f"{TRASH_DIR}/a.jpg"},
        {**good, "op": "rename", "path": "photos/a.jpg", "to": "docs/a.jpg"},
        {**good, "blake3": "not-a-hash"},
        {**good, "inode": "1:2"},
        {**good, "duplicate_of": "docs/notes.txt"},  # "keeps" the very file it trashes
        {**good, "duplicate_of": "../outside/secret.txt"},
        "not an op",
        good,
    ]
    results = root.execute(hostile)
    assert [r["code"] for r in results] == [
        "P_BAD_OP", "P_TRAVERSAL", "P_ABSOLUTE", "P_IN_TRASH", "P_BAD_OP", "P_BAD_OP",
        "P_BAD_OP", "P_BAD_OP", "P_TRAVERSAL", "P_BAD_OP", None]
    assert (rootdir / "photos" / "a.jpg").read_bytes() == b"JPEG-A"
    assert not (rootdir / "docs" / "notes.txt").exists()


def test_trash_entries_that_point_outside_are_ignored(root, rootdir):
    root.execute(root.plan("delete", {"paths": ["photos/b.jpg"]}))
    entry = str(uuid.uuid4())
    (rootdir / TRASH_DIR / entry / "x").mkdir(parents=True)
    (rootdir / TRASH_DIR / entry / "x" / "y").write_bytes(b"y")
    (rootdir / TRASH_DIR / f"{entry}.json").write_text(json.dumps(
        {"original": "../outside/y", "blake3": b3(b"y"), "size": 1,
         "trashed_at": "2999-01-01T00:00:00Z"}))
    assert [t["original"] for t in root.trashed()] == ["photos/b.jpg"]
    assert root.restore(["../outside/y"])[0]["code"] == "P_TRAVERSAL"


def test_an_index_without_its_file_is_ignored(root, rootdir):
    """A crash between writing a trash index and moving the file leaves an orphan index."""
    root.execute(root.plan("delete", {"paths": ["docs/notes.txt"]}))
    orphan = str(uuid.uuid4())
    (rootdir / TRASH_DIR / orphan / "docs").mkdir(parents=True)
    (rootdir / TRASH_DIR / f"{orphan}.json").write_text(json.dumps(
        {"original": "docs/notes.txt", "blake3": b3(b"other"), "size": 5,
         "trashed_at": "2999-01-01T00:00:00.000000Z"}))  # newer, but its file never arrived
    assert [t["trashed_at"] < "2999" for t in root.trashed()] == [True]
    assert root.restore(["docs/notes.txt"])[0]["status"] == "done"
    assert (rootdir / "docs" / "notes.txt").read_bytes() == b"notes"


def test_names_that_are_not_utf8_are_skipped_not_reported_broken(root, rootdir):
    fd = os.open(os.fsencode(rootdir / "docs") + b"/\xff\xfe.txt", os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    assert [f["path"] for f in root.list_files("docs")] == ["docs/notes.txt"]
    json.dumps(root.list_files("."), ensure_ascii=False).encode("utf-8")  # reportable
