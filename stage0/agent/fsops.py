"""The governed agent's file operations, strictly inside one root directory.

Pure local code (no HTTP, no database): list, find duplicates by BLAKE3 content hash, plan the
personal_ops actions, execute a plan, restore from the trash. Nothing here ever unlinks user
data: "delete" moves a file into `<root>/.logline-trash/`, from which `restore` brings it back.

Paths given by users are RELATIVE to the root and '/'-separated ("photos", "photos/a.jpg",
"." for the root itself); "" and "." components are ignored ("photos/" == "photos").

How escapes and races are prevented:
- the root is opened once; every path is resolved by walking its components with
  `os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)` from that descriptor (openat
  style), never by joining strings, so a symlink anywhere on the way is refused and `..` can
  never be reached (it is refused before any walk);
- files are opened with O_NOFOLLOW | O_NONBLOCK and checked with fstat to be regular files;
- moves use `renameat2(RENAME_NOREPLACE)` between directory descriptors where the kernel
  offers it (an existing destination is never overwritten, even if it appears between check and
  move), otherwise `os.rename(src_dir_fd=, dst_dir_fd=)` after a check;
- every op carries the file's BLAKE3, size and [st_dev, st_ino] at plan time; execution checks
  them before moving and hashes the file again at its new place after moving; if anything
  differs the file is moved back and the op is refused with P_CHANGED;
- listing never follows symlinks (they are skipped, as are FIFOs, sockets and devices) and
  skips names that are not valid UTF-8 (they could not be reported in a span).

Which copy delete_duplicates keeps (one per group of identical files; the others are
trashed): the one ranked first by
1. a name that does not look like a copy: no component of its path (folder or file name)
   contains the word "copy" ("a copy.jpg", "a - Copy.jpg", "Copy of a.jpg", "copy-of-a.jpg";
   not "copyright.txt"), ends in a number in brackets ("a (1).jpg", "a(2)") or in "~"
   ("a.txt~"). Such names are what copying tools give the copy, so they say which is which;
2. then the oldest modification time: the original is usually there first (`cp`, downloads
   and sync tools give the copy a new time), and it is what other things may already point to;
3. then the path, sorted: ties are broken the same way every time.
Each trash op of the plan names the copy kept (`duplicate_of`) and which of these rules
chose it over this file (`kept_because`: "name", "older" or "path"), so approvers see both.
When the plan runs, a trash op with `duplicate_of` first checks that the kept copy is still
there with the same content; if not, that file is not trashed (P_CHANGED).

Reason codes (FsRefused.code; `where` is the offending relative path):
| code | meaning |
| --- | --- |
| P_BAD_PATH | not a string, empty, longer than 4096, a component longer than 255, not UTF-8 |
| P_ABSOLUTE | starts with '/', '\\', '~' or a drive ("C:", "C:/...", "C:\\...") |
| P_TRAVERSAL | a '..' component or a NUL character |
| P_SYMLINK | a component of the path is a symlink (refused even if it points inside) |
| P_NOT_FOUND | no such file or directory (also: the root itself, a path with nothing trashed) |
| P_NOT_A_FILE | a file was expected (a directory, the root, a FIFO, a device...) |
| P_NOT_A_DIR | a directory was expected |
| P_EXISTS | a destination exists (never overwritten), or two ops have the same destination |
| P_IN_TRASH | a user path inside `.logline-trash/` (the trash cannot be listed or targeted) |
| P_CHANGED | a file's content or identity changed between plan and execution; or the kept
  copy a duplicate names (duplicate_of) is gone or changed |
| P_UNKNOWN_ACTION | plan() of an action that is not delete, delete_duplicates, move, rename |
| P_BAD_ARGS | the action's arguments are missing, of the wrong type, or list a path twice |
| P_BAD_NAME | rename's new_name is empty, '.', '..', contains '/' or NUL, or is too long |
| P_BAD_OP | an op given to execute() is malformed (unknown op, bad hash, bad inode, a
  duplicate_of naming the file itself...) |
| P_TOO_DEEP | a directory tree deeper than 256 levels |
| P_IO | any other operating-system error (message included) |
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from stage0.errors import LoglineError

TRASH_DIR = ".logline-trash"
MAX_PATH = 4096
MAX_NAME = 255
MAX_PATHS = 10000
MAX_DEPTH = 256
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: A path component that names a copy (see "Which copy delete_duplicates keeps" above).
_COPY_LIKE = re.compile(r"(?<![a-z0-9])copy(?![a-z])|\(\d+\)(?:\.[^.]*)*$|~$")
_DRIVE = re.compile(r"[A-Za-z]:(?:[\\/]|$)")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

CODES = (
    "P_BAD_PATH", "P_ABSOLUTE", "P_TRAVERSAL", "P_SYMLINK", "P_NOT_FOUND", "P_NOT_A_FILE",
    "P_NOT_A_DIR", "P_EXISTS", "P_IN_TRASH", "P_CHANGED", "P_UNKNOWN_ACTION", "P_BAD_ARGS",
    "P_BAD_NAME", "P_BAD_OP", "P_TOO_DEEP", "P_IO",
)
ACTIONS = ("delete", "delete_duplicates", "move", "rename")


class FsRefused(LoglineError):
    """A refused file operation; `code` is one of CODES, `where` the relative path."""


class _LeftAt(FsRefused):
    """P_CHANGED after a move that could not be undone: the file is at the destination."""


# --- paths -------------------------------------------------------------------------------


def parse_path(path: Any) -> tuple[str, ...]:
    """A user path as its components (() is the root); refuses anything that could escape."""
    if not isinstance(path, str):
        raise FsRefused("P_BAD_PATH", f"a path must be a string, not {type(path).__name__}")
    if path == "":
        raise FsRefused("P_BAD_PATH", "empty path (use '.' for the root)")
    if len(path) > MAX_PATH:
        raise FsRefused("P_BAD_PATH", f"path longer than {MAX_PATH} characters", path[:80])
    if "\x00" in path:
        raise FsRefused("P_TRAVERSAL", "NUL character in path", path.replace("\x00", "\\0"))
    if path.startswith(("/", "\\", "~")) or _DRIVE.match(path):
        raise FsRefused("P_ABSOLUTE", "paths are relative to the agent's root", path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise FsRefused("P_BAD_PATH", "path is not valid UTF-8", repr(path)) from None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FsRefused("P_TRAVERSAL", "'..' is not allowed in paths", path)
    for p in parts:
        if len(p) > MAX_NAME:
            raise FsRefused("P_BAD_PATH", f"a component longer than {MAX_NAME}", path)
    if parts and parts[0].casefold() == TRASH_DIR:
        raise FsRefused("P_IN_TRASH", f"{TRASH_DIR}/ belongs to the agent", path)
    return parts


def _rel(parts: tuple[str, ...] | list[str]) -> str:
    return "/".join(parts) if parts else "."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- low-level, descriptor-relative helpers ----------------------------------------------

def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_RENAME_NOREPLACE = 1


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refusal_for(dir_fd: int, name: str, where: str, want: str,
                 exc: OSError | None = None) -> FsRefused:
    """Why `name` could not be opened as a `want` ("dir" or "file")."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return FsRefused("P_NOT_FOUND", "no such file or directory", where)
    except OSError as exc:
        return FsRefused("P_IO", exc.strerror or str(exc), where)
    if stat.S_ISLNK(st.st_mode):
        return FsRefused("P_SYMLINK", "symlinks are refused", where)
    if want == "dir" and not stat.S_ISDIR(st.st_mode):
        return FsRefused("P_NOT_A_DIR", "not a directory", where)
    if want == "file" and not stat.S_ISREG(st.st_mode):
        return FsRefused("P_NOT_A_FILE", "not a regular file", where)
    if exc is not None and exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
        return FsRefused("P_IO", exc.strerror or str(exc), where)
    return FsRefused("P_CHANGED", "changed while being opened", where)


def _walk_dirs(start_fd: int, parts: tuple[str, ...] | list[str], where: str,
               create: bool = False) -> int:
    """A new descriptor of start/parts, walked one component at a time without following
    symlinks; missing directories are made when `create`. The caller closes it."""
    fd = os.dup(start_fd)
    try:
        for i, name in enumerate(parts):
            here = where if i == len(parts) - 1 else f"{where} (at {_rel(parts[: i + 1])})"
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise FsRefused("P_NOT_FOUND", "no such directory", here) from None
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refusal_for(fd, name, here, "dir", exc) from None
            except OSError as exc:
                raise _refusal_for(fd, name, here, "dir", exc) from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_file(dir_fd: int, name: str, where: str) -> tuple[int, os.stat_result]:
    st = _lstat(dir_fd, name)
    if st is None:
        raise FsRefused("P_NOT_FOUND", "no such file", where)
    if not stat.S_ISREG(st.st_mode):  # never open a device or FIFO, never follow a link
        raise _refusal_for(dir_fd, name, where, "file")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal_for(dir_fd, name, where, "file", exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FsRefused("P_CHANGED", "replaced by something that is not a file", where)
    return fd, st


def _file_state(dir_fd: int, name: str, where: str) -> dict[str, Any]:
    """{"blake3", "size", "inode": [st_dev, st_ino]} of the regular file dir/name."""
    fd, st = _open_file(dir_fd, name, where)
    try:
        h = blake3.blake3()
        size = 0
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return {"blake3": h.hexdigest(), "size": size, "inode": [st.st_dev, st.st_ino]}


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str, where: str) -> None:
    if _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FsRefused("P_EXISTS", "the destination exists (never overwritten)", where)
        if err == errno.ENOENT:
            raise FsRefused("P_CHANGED", "the file disappeared before it was moved", where)
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err))
    if _lstat(dst_fd, dst) is not None:
        raise FsRefused("P_EXISTS", "the destination exists (never overwritten)", where)
    try:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except FileNotFoundError:
        raise FsRefused("P_CHANGED", "the file disappeared before it was moved", where) from None


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename still happened
        pass


def _same(planned: dict[str, Any], seen: dict[str, Any]) -> bool:
    return (seen["blake3"] == planned["blake3"] and seen["size"] == planned["size"]
            and list(seen["inode"]) == list(planned["inode"]))


def _result(op: Any, kind: str | None = None) -> dict[str, Any]:
    op = op if isinstance(op, dict) else {}
    path, to = op.get("path"), op.get("to")
    size = op.get("size")
    return {
        "op": kind if kind is not None else (op.get("op") if isinstance(op.get("op"), str)
                                             else None),
        "path": path if isinstance(path, str) else None,
        "to": to if isinstance(to, str) else None,
        "status": "done", "code": None, "message": None,
        "blake3_before": None, "blake3_after": None,
        "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
    }


def _check_op(op: Any) -> tuple[str, tuple[str, ...], tuple[str, ...] | None, dict[str, Any]]:
    if not isinstance(op, dict):
        raise FsRefused("P_BAD_OP", "an op must be an object")
    kind = op.get("op")
    if kind not in ("trash", "move", "rename"):
        raise FsRefused("P_BAD_OP", f"unknown op {kind!r} (trash, move, rename)")
    src = parse_path(op.get("path"))
    if not src:
        raise FsRefused("P_NOT_A_FILE", "the root is not a file", ".")
    where = _rel(src)
    digest, size, inode = op.get("blake3"), op.get("size"), op.get("inode")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise FsRefused("P_BAD_OP", "blake3 must be 64 lowercase hex digits", where)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FsRefused("P_BAD_OP", "size must be a non-negative integer", where)
    if (not isinstance(inode, list | tuple) or len(inode) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in inode)):
        raise FsRefused("P_BAD_OP", "inode must be [st_dev, st_ino]", where)
    planned: dict[str, Any] = {"blake3": digest, "size": size, "inode": list(inode)}
    if kind == "trash" and op.get("duplicate_of") is not None:
        keep = parse_path(op["duplicate_of"])
        if not keep or keep == src:
            raise FsRefused("P_BAD_OP", "duplicate_of must name another file", where)
        planned["duplicate_of"] = keep
    dst = None
    if kind != "trash":
        dst = parse_path(op.get("to"))
        if not dst:
            raise FsRefused("P_EXISTS", "the root cannot be a destination", ".")
        if kind == "rename" and dst[:-1] != src[:-1]:
            raise FsRefused("P_BAD_OP", "a rename stays in its directory", _rel(dst))
    return kind, src, dst, planned


# --- the root -----------------------------------------------------------------------------


def _io_refusals(method: Callable[..., Any]) -> Callable[..., Any]:
    """Only FsRefused leaves the public methods: any other OS error becomes P_IO."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError as exc:
            raise FsRefused("P_IO", str(exc)) from exc
    return wrapper


class Root:
    """A directory the agent may act in; nothing outside it is ever read or changed."""

    def __init__(self, path: str | Path) -> None:
        self._fd: int | None = None
        real = os.path.realpath(os.fspath(path))
        try:
            self._fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FsRefused("P_NOT_FOUND", "the agent's root does not exist",
                            os.fspath(path)) from None
        except NotADirectoryError:
            raise FsRefused("P_NOT_A_DIR", "the agent's root is not a directory",
                            os.fspath(path)) from None
        self.path = Path(real)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise FsRefused("P_IO", "the root is closed")
        return self._fd

    # --- reading ---

    def _dir(self, parts: tuple[str, ...], where: str, create: bool = False) -> int:
        return _walk_dirs(self.fd, parts, where, create)

    def _state(self, parts: tuple[str, ...]) -> dict[str, Any]:
        where = _rel(parts)
        if not parts:
            raise FsRefused("P_NOT_A_FILE", "the root is not a file", where)
        dfd = self._dir(parts[:-1], where)
        try:
            return _file_state(dfd, parts[-1], where)
        finally:
            os.close(dfd)

    def _walk(self, path: str, hashed: bool) -> list[dict[str, Any]]:
        parts = parse_path(path)
        fd = self._dir(parts, _rel(parts))
        out: list[dict[str, Any]] = []
        try:
            self._walk_fd(fd, parts, out, hashed, 0)
        finally:
            os.close(fd)
        out.sort(key=lambda e: e["path"])
        return out

    def _walk_fd(self, fd: int, parts: tuple[str, ...], out: list[dict[str, Any]],
                 hashed: bool, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FsRefused("P_TOO_DEEP", f"more than {MAX_DEPTH} levels", _rel(parts))
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            if not parts and name.casefold() == TRASH_DIR:
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            st = _lstat(fd, name)
            if st is None:
                continue  # gone since it was listed
            if stat.S_ISDIR(st.st_mode):
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # replaced (by a symlink?) since it was listed: skip
                try:
                    self._walk_fd(cfd, (*parts, name), out, hashed, depth + 1)
                finally:
                    os.close(cfd)
            elif stat.S_ISREG(st.st_mode):
                rel = _rel((*parts, name))
                if hashed:
                    try:
                        state = _file_state(fd, name, rel)
                    except FsRefused:
                        continue
                else:
                    state = {"blake3": None, "size": st.st_size,
                             "inode": [st.st_dev, st.st_ino]}
                out.append({"path": rel, **state, "mtime_ns": st.st_mtime_ns})

    @_io_refusals
    def list_files(self, path: str) -> list[dict[str, Any]]:
        """Every regular file under the directory `path` (recursive), sorted by path:
        [{"path", "size", "blake3"}]. Symlinks and the trash are skipped."""
        return [{"path": e["path"], "size": e["size"], "blake3": e["blake3"]}
                for e in self._walk(path, hashed=True)]

    def _duplicates(self, path: str) -> tuple[list[dict[str, Any]], dict[str, dict]]:
        by_size: dict[int, list[str]] = {}
        mtimes: dict[str, int] = {}
        for e in self._walk(path, hashed=False):
            if e["size"] > 0:  # empty files are placeholders, not duplicates
                by_size.setdefault(e["size"], []).append(e["path"])
                mtimes[e["path"]] = e["mtime_ns"]
        states: dict[str, dict[str, Any]] = {}
        by_hash: dict[str, list[str]] = {}
        for paths in by_size.values():
            if len(paths) < 2:
                continue
            for rel in paths:
                try:
                    state = self._state(parse_path(rel))
                except FsRefused:
                    continue  # gone or replaced while we looked
                states[rel] = state
                by_hash.setdefault(state["blake3"], []).append(rel)
        groups = [{"blake3": h, "size": states[ps[0]]["size"], "paths": sorted(ps),
                   "keep": min(ps, key=lambda p: _keep_rank(p, mtimes[p]))}
                  for h, ps in by_hash.items() if len(ps) >= 2]
        groups.sort(key=lambda g: g["paths"][0])
        for g in groups:
            keep = _keep_rank(g["keep"], mtimes[g["keep"]])
            g["why"] = {p: _kept_because(keep, _keep_rank(p, mtimes[p]))
                        for p in g["paths"] if p != g["keep"]}
        return groups, states

    @_io_refusals
    def detect_duplicates(self, path: str) -> list[dict[str, Any]]:
        """Groups of >= 2 non-empty files under `path` with the same content (BLAKE3):
        [{"blake3", "size", "paths": [sorted], "keep": the copy delete_duplicates keeps}],
        sorted by first path."""
        return [{k: g[k] for k in ("blake3", "size", "paths", "keep")}
                for g in self._duplicates(path)[0]]

    @_io_refusals
    def suggest_cleanup(self, path: str) -> list[dict[str, Any]]:
        """The plan delete_duplicates would make (nothing is changed)."""
        return self.plan("delete_duplicates", {"path": path})

    # --- planning ---

    @_io_refusals
    def plan(self, action: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The ops for a personal_ops action, computed now from the disk. All or nothing:
        any problem raises FsRefused naming the path."""
        if action not in ACTIONS:
            raise FsRefused("P_UNKNOWN_ACTION", f"plan() knows {', '.join(ACTIONS)}",
                            str(action)[:80])
        if not isinstance(args, dict):
            raise FsRefused("P_BAD_ARGS", "arguments must be an object", action)
        if action == "delete":
            return [self._op("trash", p, None) for p in _paths_arg(args)]
        if action == "delete_duplicates":
            groups, states = self._duplicates(_str_arg(args, "path"))
            return [{"op": "trash", "path": rel, "to": None, **states[rel],
                     "duplicate_of": g["keep"], "kept_because": g["why"][rel]}
                    for g in groups for rel in g["paths"] if rel != g["keep"]]
        if action == "move":
            sources = _paths_arg(args)
            dest = parse_path(_str_arg(args, "destination"))
            os.close(self._dir(dest, _rel(dest)))  # exists, is a directory, no symlink
            ops = [self._op("move", p, (*dest, p[-1])) for p in sources]
        else:
            src = parse_path(_str_arg(args, "path"))
            if not src:
                raise FsRefused("P_NOT_A_FILE", "the root cannot be renamed", ".")
            new = _name_arg(args, "new_name")
            dst = parse_path(_rel((*src[:-1], new)))
            ops = [self._op("rename", src, dst)]
        seen: set[str] = set()
        for op in ops:
            if op["to"] in seen:
                raise FsRefused("P_EXISTS", "two files would get the same destination", op["to"])
            seen.add(op["to"])
        return ops

    def _op(self, kind: str, src: tuple[str, ...], dst: tuple[str, ...] | None) -> dict:
        state = self._state(src)
        op = {"op": kind, "path": _rel(src), "to": None, **state}
        if dst is not None:
            op["to"] = _rel(dst)
            dfd = self._dir(dst[:-1], op["to"])
            try:
                if _lstat(dfd, dst[-1]) is not None:
                    raise FsRefused("P_EXISTS", "the destination exists (never overwritten)",
                                    op["to"])
            finally:
                os.close(dfd)
        return op

    # --- executing ---

    @_io_refusals
    def execute(self, ops: list[dict[str, Any]],
                on_op: Callable[[int, dict[str, Any]], None] | None = None,
                ) -> list[dict[str, Any]]:
        """Run a plan, op by op: verify (hash, size, inode), act, verify again. One result per
        op: {"op", "path", "to", "status": "done"|"refused", "code", "message",
        "blake3_before", "blake3_after", "size"}. A refused op does not stop the others.
        on_op(index, result) is called after each op; if it raises, execution stops there."""
        if not isinstance(ops, list):
            raise FsRefused("P_BAD_OP", "ops must be a list")
        results = []
        for i, op in enumerate(ops):
            res = _result(op)
            try:
                kind, src, dst, planned = _check_op(op)
                res.update(op=kind, path=_rel(src), to=_rel(dst) if dst else None)
                if kind == "trash":
                    self._trash(src, planned, res)
                else:
                    self._move(src, dst, planned, res)  # type: ignore[arg-type]
            except FsRefused as exc:
                res.update(status="refused", code=exc.code, message=exc.message)
            except OSError as exc:
                res.update(status="refused", code="P_IO", message=str(exc))
            results.append(res)
            if on_op is not None:
                on_op(i, res)
        return results

    def _move(self, src: tuple[str, ...], dst: tuple[str, ...], planned: dict[str, Any],
              res: dict[str, Any]) -> None:
        where, to = _rel(src), _rel(dst)
        sfd = self._dir(src[:-1], where)
        try:
            dfd = self._dir(dst[:-1], to)
            try:
                self._relocate(sfd, src[-1], dfd, dst[-1], where, to, planned, res)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    @staticmethod
    def _relocate(sfd: int, sname: str, dfd: int, dname: str, where: str, to: str,
                  planned: dict[str, Any], res: dict[str, Any]) -> None:
        """Verify, move without overwriting, verify at the new place (else move back)."""
        before = _file_state(sfd, sname, where)
        res["blake3_before"] = before["blake3"]
        if not _same(planned, before):
            raise FsRefused("P_CHANGED", "content or identity differs from the plan", where)
        _rename_noreplace(sfd, sname, dfd, dname, to)
        _fsync(dfd)
        if dfd != sfd:
            _fsync(sfd)
        try:
            after: dict[str, Any] | None = _file_state(dfd, dname, to)
        except FsRefused:
            after = None
        res["blake3_after"] = after["blake3"] if after else None
        if after is not None and _same(planned, after):
            return
        try:
            _rename_noreplace(dfd, dname, sfd, sname, where)
        except (FsRefused, OSError):
            raise _LeftAt("P_CHANGED", f"changed while being moved; could not move it back, "
                          f"it is at {to}", where) from None
        res["blake3_after"] = None
        raise FsRefused("P_CHANGED", "changed while being moved; moved back", where)

    def _trash_fd(self, create: bool) -> int | None:
        """A descriptor of the trash directory (made if `create`), or None if there is none."""
        try:
            return _walk_dirs(self.fd, (TRASH_DIR,), TRASH_DIR)
        except FsRefused as exc:
            if exc.code != "P_NOT_FOUND":
                raise
            if not create:
                return None
        try:
            os.mkdir(TRASH_DIR, 0o700, dir_fd=self.fd)
        except FileExistsError:
            pass
        _fsync(self.fd)
        return _walk_dirs(self.fd, (TRASH_DIR,), TRASH_DIR)

    def _trash(self, src: tuple[str, ...], planned: dict[str, Any],
               res: dict[str, Any]) -> None:
        where = _rel(src)
        sfd = self._dir(src[:-1], where)
        try:
            before = _file_state(sfd, src[-1], where)
            res["blake3_before"] = before["blake3"]
            if not _same(planned, before):
                raise FsRefused("P_CHANGED", "content or identity differs from the plan", where)
            if planned.get("duplicate_of"):
                self._check_kept(planned["duplicate_of"], planned["blake3"], where)
            tfd = self._trash_fd(create=True)
            assert tfd is not None
            try:
                entry = str(uuid.uuid4())
                index = {"original": where, "blake3": planned["blake3"],
                         "size": planned["size"], "trashed_at": _now()}
                _write_new(tfd, f"{entry}.json", json.dumps(index, sort_keys=True).encode())
                os.mkdir(entry, 0o700, dir_fd=tfd)
                efd = _walk_dirs(tfd, (entry, *src[:-1]), where, create=True)
                _fsync(tfd)
                try:
                    to = _rel((TRASH_DIR, entry, *src))
                    try:
                        self._relocate(sfd, src[-1], efd, src[-1], where, to, planned, res)
                    except _LeftAt:
                        res["to"] = to  # still in the trash, restorable
                        raise
                    except FsRefused:
                        _drop_entry(tfd, entry, src[:-1])  # nothing was put in the trash
                        raise
                    res["to"] = to
                finally:
                    os.close(efd)
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)

    def _check_kept(self, keep: tuple[str, ...], digest: str, where: str) -> None:
        """A duplicate is trashed only while the copy the plan keeps is still there, with
        the same content: otherwise trashing it could leave no copy in place."""
        try:
            kept = self._state(keep)["blake3"]
        except FsRefused as exc:
            raise FsRefused("P_CHANGED", f"the copy the plan keeps, {_rel(keep)}, is gone or "
                            f"unreadable ({exc.code}): not trashed", where) from None
        if kept != digest:
            raise FsRefused("P_CHANGED", f"the copy the plan keeps, {_rel(keep)}, changed: "
                            "not trashed", where)

    # --- the trash ---

    def _index(self, tfd: int) -> list[dict[str, Any]]:
        """The trash's index entries whose file is still there, newest first."""
        entries = []
        with os.scandir(tfd) as it:
            names = [e.name for e in it if e.name.endswith(".json")]
        for name in names:
            entry = name[: -len(".json")]
            try:
                if str(uuid.UUID(entry)) != entry:
                    continue
                fd, st = _open_file(tfd, name, name)
                try:
                    meta = json.loads(os.read(fd, 65536)) if st.st_size <= 65536 else None
                finally:
                    os.close(fd)
                if not isinstance(meta, dict) or not isinstance(meta.get("trashed_at"), str):
                    continue
                parts = parse_path(meta.get("original"))
                if not parts or _rel(parts) != meta["original"]:
                    continue
                if not isinstance(meta.get("blake3"), str) or not isinstance(
                        meta.get("size"), int):
                    continue
                efd = _walk_dirs(tfd, (entry, *parts[:-1]), name)
                try:
                    present = _lstat(efd, parts[-1])
                finally:
                    os.close(efd)
            except (FsRefused, ValueError, OSError):
                continue  # not ours, half-written (crash) or already restored
            if present is not None and stat.S_ISREG(present.st_mode):
                entries.append({"entry": entry, "original": meta["original"],
                                "blake3": meta["blake3"], "size": meta["size"],
                                "trashed_at": meta["trashed_at"]})
        entries.sort(key=lambda e: (e["trashed_at"], e["entry"]), reverse=True)
        return entries

    @_io_refusals
    def trashed(self) -> list[dict[str, Any]]:
        """What the trash holds, newest first: [{"entry", "original", "blake3", "size",
        "trashed_at"}]."""
        tfd = self._trash_fd(create=False)
        if tfd is None:
            return []
        try:
            return self._index(tfd)
        finally:
            os.close(tfd)

    @_io_refusals
    def restore(self, paths: list[str]) -> list[dict[str, Any]]:
        """Bring trashed files back to their ORIGINAL relative paths (the newest trash entry
        of each); an occupied original place is never overwritten (P_EXISTS). Missing parent
        directories are re-created. One result per path, like execute()'s, with "from" the
        place in the trash."""
        if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS:
            raise FsRefused("P_BAD_ARGS", f"paths must be a list of 1..{MAX_PATHS} paths")
        tfd = self._trash_fd(create=False)
        try:
            index = self._index(tfd) if tfd is not None else []
            results = []
            for path in paths:
                res = _result({"path": path, "to": path}, "restore")
                res["from"] = None
                try:
                    parts = parse_path(path)
                    res["path"] = res["to"] = _rel(parts)
                    found = [e for e in index if e["original"] == _rel(parts)]
                    if not found or tfd is None:
                        raise FsRefused("P_NOT_FOUND", "nothing with this path in the trash",
                                        _rel(parts))
                    entry = found[0]
                    index.remove(entry)
                    res["size"] = entry["size"]
                    res["from"] = _rel((TRASH_DIR, entry["entry"], *parts))
                    self._restore_one(tfd, entry, parts, res)
                except FsRefused as exc:
                    res.update(status="refused", code=exc.code, message=exc.message)
                except OSError as exc:
                    res.update(status="refused", code="P_IO", message=str(exc))
                results.append(res)
            return results
        finally:
            if tfd is not None:
                os.close(tfd)

    def _restore_one(self, tfd: int, entry: dict[str, Any], parts: tuple[str, ...],
                     res: dict[str, Any]) -> None:
        where = _rel(parts)
        efd = _walk_dirs(tfd, (entry["entry"], *parts[:-1]), res["from"])
        try:
            st = _lstat(efd, parts[-1])
            if st is None:
                raise FsRefused("P_NOT_FOUND", "gone from the trash", res["from"])
            inode = [st.st_dev, st.st_ino]
            planned = {"blake3": entry["blake3"], "size": entry["size"], "inode": inode}
            dfd = self._dir(parts[:-1], where, create=True)
            try:
                self._relocate(efd, parts[-1], dfd, parts[-1], res["from"], where, planned,
                               res)
            finally:
                os.close(dfd)
        finally:
            os.close(efd)
        try:
            os.unlink(f"{entry['entry']}.json", dir_fd=tfd)  # our index, not user data
        except FileNotFoundError:
            pass
        _drop_entry(tfd, entry["entry"], parts[:-1])


def _copy_like(path: str) -> bool:
    """Whether a folder or the file name of `path` looks like a copy's."""
    return any(_COPY_LIKE.search(part.casefold()) for part in path.split("/"))


def _keep_rank(path: str, mtime_ns: int) -> tuple[bool, int, str]:
    """delete_duplicates keeps the lowest: not copy-like, then oldest, then by path."""
    return (_copy_like(path), mtime_ns, path)


def _kept_because(keep: tuple[bool, int, str], other: tuple[bool, int, str]) -> str:
    """Which rule put the kept copy before `other`: "name", "older" or "path"."""
    if keep[0] != other[0]:
        return "name"
    return "older" if keep[1] != other[1] else "path"


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_entry(tfd: int, entry: str, parents: tuple[str, ...]) -> None:
    """Remove a trash entry's index and its now EMPTY directories (rmdir only: a directory
    that still holds anything stays)."""
    try:
        os.unlink(f"{entry}.json", dir_fd=tfd)
    except FileNotFoundError:
        pass
    names = (entry, *parents)
    fds = [os.dup(tfd)]
    try:
        for name in names[:-1]:
            fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
        for k in range(len(names) - 1, -1, -1):
            os.rmdir(names[k], dir_fd=fds[k])
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)


def _str_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise FsRefused("P_BAD_ARGS", f"{key} must be a string", key)
    return value


def _name_arg(args: dict[str, Any], key: str) -> str:
    name = _str_arg(args, key)
    if (name in ("", ".", "..") or "/" in name or "\x00" in name or len(name) > MAX_NAME):
        raise FsRefused("P_BAD_NAME", "a file name: no '/', not '.' or '..', at most 255",
                        name.replace("\x00", "\\0")[:80])
    return name


def _paths_arg(args: dict[str, Any]) -> list[tuple[str, ...]]:
    paths = args.get("paths")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS:
        raise FsRefused("P_BAD_ARGS", f"paths must be a list of 1..{MAX_PATHS} paths", "paths")
    out, seen = [], set()
    for p in paths:
        parts = parse_path(p)
        if not parts:
            raise FsRefused("P_NOT_A_FILE", "the root is not a file", ".")
        if parts in seen:
            raise FsRefused("P_BAD_ARGS", "listed twice", _rel(parts))
        seen.add(parts)
        out.append(parts)
    return out
