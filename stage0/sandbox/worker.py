"""The sandbox worker: one warm OS process that runs untrusted code (function spans, policies).

Started by stage0.sandbox.pool.SandboxPool as `python -I <this file> CONFIG_JSON` with an
empty environment. It imports only the standard library, RestrictedPython and blake3 (never
stage0: it runs with -I, so nothing of the host application is importable), then hardens
itself once:

1. imports and warms every module user code may use (nothing is imported after this point);
2. as root: unshares a new, empty network namespace, chroots into an empty read-only
   directory, sets the process limits (address space, files, file size 0, core 0, processes
   0), drops to `nobody` (setgroups/setgid/setuid) and sets no_new_privs and non-dumpable;
   not as root: tries an unprivileged user+network namespace, sets the same limits;
3. reports what applied in a `ready` frame.

Then it serves length-prefixed JSON frames (4-byte big-endian length, UTF-8 JSON) on its
original stdin/stdout; fds 0 and 1 are pointed at /dev/null so nothing the process prints can
corrupt the protocol. User `print` goes to a bounded collector and comes back as `stdout`.

Per run: CPU time (ITIMER_PROF, default action kills the process, plus RLIMIT_CPU as a
backstop; the parent sees SIGPROF/SIGXCPU), address space (RLIMIT_AS soft limit), recursion
depth, output size. The parent enforces wall time by killing the process. Each run has a Run
of its own (refusal, printed text, module views, `random` generator) and fresh globals and
builtins whose guards are bound to it; the decimal context is reset per run. After the entry
returns, still inside the run's limits, the globals are cleared and the garbage collector
finalises whatever the run left in reference cycles; if any of its code survives that, or
the run did not end ok (except a compile refusal), the worker reports `retire` and exits.
So nothing of one run executes during another. docs/sandbox.md describes the threat model.
"""

from __future__ import annotations

import _strptime  # noqa: F401  (lazy imports of allowed modules: nothing may load later)
import ast
import bisect  # noqa: F401
import codecs
import collections
import copy  # noqa: F401
import ctypes
import datetime
import decimal
import encodings
import functools
import gc
import hashlib
import heapq  # noqa: F401  (Counter.most_common imports it lazily)
import itertools
import json
import math
import operator
import os
import pwd
import random
import re
import resource
import signal
import socket
import statistics
import string
import struct
import sys
import types
from collections import OrderedDict
from typing import Any, NoReturn

from blake3 import blake3
from RestrictedPython import (
    PrintCollector,
    compile_restricted_exec,
    limited_builtins,
    safe_builtins,
    utility_builtins,
)
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
)
from RestrictedPython.transformer import (
    INSPECT_ATTRIBUTES,
    IOPERATOR_TO_STR,
    RestrictingNodeTransformer,
    copy_locations,
)

FILENAME = "<sandbox>"
MAX_SAFE_INTEGER = 2**53 - 1  # same bounds as stage0.spans.canonical: outputs must fit in a span
MAX_JSON_DEPTH = 64
MAX_MESSAGE = 1000
CODE_CACHE_SIZE = 512
MB = 1024 * 1024

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


# --------------------------------------------------------------------------- errors and the run

class SandboxForbidden(Exception):
    """Raised by a guard. The refusal is also recorded in its run, so catching it hides
    nothing."""


def _refuse(run: Run | None, message: str) -> NoReturn:
    if run is not None and run.violation is None:
        run.violation = message
    raise SandboxForbidden(message)


# --------------------------------------------------------------------------- allowed modules

class _Module:
    """A read-only view of an allowed module: only curated attributes, no writes. Each run
    gets its own views (bound to its Run, where refusals are recorded) over shared,
    immutable attribute maps.

    Unknown attributes raise SandboxForbidden, never AttributeError: `from m import x` falls
    back to sys.modules["<m.__name__>.x"] on AttributeError, which would hand out real
    submodules (json.decoder, collections.abc).
    """

    __slots__ = ("_name", "_attrs", "_run")

    def __init__(self, name: str, attrs: Any, run: Run | None = None) -> None:
        if not isinstance(attrs, types.MappingProxyType):
            attrs = types.MappingProxyType(dict(attrs))
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attrs", attrs)
        object.__setattr__(self, "_run", run)

    def __getattr__(self, attr: str) -> Any:
        try:
            return self._attrs[attr]
        except KeyError:
            _refuse(self._run, f"{self._name}.{attr} is not available in the sandbox")

    def __setattr__(self, attr: str, value: Any) -> None:
        _refuse(self._run, f"cannot modify module {self._name}")

    def __delattr__(self, attr: str) -> None:
        _refuse(self._run, f"cannot modify module {self._name}")

    def __repr__(self) -> str:
        return f"<sandboxed module {self._name}>"


def _pick(module: Any, names: str) -> dict[str, Any]:
    return {n: getattr(module, n) for n in names.split()}


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes):
        return data
    raise TypeError(f"expected str or bytes, got {type(data).__name__}")


def _sha256(data: Any = b"") -> Any:
    return hashlib.sha256(_as_bytes(data))


def _blake2b(data: Any = b"", digest_size: int = 64) -> Any:
    return hashlib.blake2b(_as_bytes(data), digest_size=digest_size)


_STATISTICS = ("NormalDist StatisticsError correlation covariance fmean geometric_mean "
               "harmonic_mean linear_regression mean median median_grouped median_high "
               "median_low mode multimode pstdev pvariance quantiles stdev variance")
_DECIMAL = ("Decimal Context localcontext DecimalException InvalidOperation DivisionByZero "
            "Inexact Rounded Overflow Underflow Subnormal Clamped FloatOperation MAX_PREC "
            "MAX_EMAX MIN_EMIN MIN_ETINY ROUND_UP ROUND_DOWN ROUND_CEILING ROUND_FLOOR "
            "ROUND_HALF_UP ROUND_HALF_DOWN ROUND_HALF_EVEN ROUND_05UP")
_RANDOM = ("random uniform randint randrange choice choices sample shuffle gauss "
           "normalvariate triangular expovariate betavariate getrandbits seed")

#: Curated attributes per allowed module. Deliberately left out: anything that reads or
#: writes attributes by name (functools.update_wrapper/wraps merge __dict__/__globals__),
#: generates code (collections.namedtuple), shares mutable state (decimal.getcontext,
#: DefaultContext, BasicContext), formats with attribute access (string.Formatter), and
#: every submodule (json.decoder, collections.abc, statistics.sys).
MODULES: dict[str, _Module] = {
    "math": _Module("math", {n: getattr(math, n) for n in dir(math) if not n.startswith("_")}),
    "json": _Module("json", _pick(json, "dumps loads JSONDecodeError")),
    "re": _Module("re", _pick(
        re, "compile search match fullmatch split findall finditer sub subn escape error "
            "IGNORECASE I MULTILINE M DOTALL S VERBOSE X ASCII A UNICODE U NOFLAG")),
    "datetime": _Module("datetime", _pick(
        datetime, "date time datetime timedelta timezone MINYEAR MAXYEAR UTC")),
    "itertools": _Module("itertools", {n: getattr(itertools, n) for n in dir(itertools)
                                       if not n.startswith("_")}),
    "functools": _Module("functools", _pick(
        functools, "reduce partial cmp_to_key lru_cache cache")),
    "collections": _Module("collections", _pick(
        collections, "Counter OrderedDict defaultdict deque ChainMap")),
    "statistics": _Module("statistics", _pick(statistics, _STATISTICS)),
    "string": _Module("string", _pick(
        string, "ascii_letters ascii_lowercase ascii_uppercase digits hexdigits octdigits "
                "punctuation printable whitespace capwords Template")),
    "decimal": _Module("decimal", _pick(decimal, _DECIMAL)),
    "hashlib": _Module("hashlib", {"sha256": _sha256, "blake2b": _blake2b}),
    "random": _Module("random", {}),  # each run gets a generator of its own (Run.module)
}
ALLOWED_MODULES = frozenset(MODULES)



# --------------------------------------------------------------------------- guards

#: Attribute names refused on every object (on top of RestrictedPython's "_" prefix rule).
FORBIDDEN_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {"mro"}

#: Modules that C code of allowed modules imports while it runs (datetime's strftime and
#: timetuple import `time`; C warnings may import `warnings`): such an import goes through
#: the calling frame's `__import__`, which is the user's. They are already loaded; the
#: import only has to succeed (the C caller takes the module from sys.modules, the return
#: value is dropped). User code cannot name them: its import statements are checked at
#: compile time against ALLOWED_MODULES and it cannot reach `__import__`.
INTERNAL_IMPORTS = frozenset({"time", "_strptime", "warnings"})

_MISSING = object()
_WRITABLE = (dict, list, collections.deque)


def guarded_getitem(ob: Any, index: Any) -> Any:
    return ob[index]


_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "|=": operator.ior,
    "^=": operator.ixor, "&=": operator.iand, "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target: Any, value: Any) -> Any:
    return _INPLACE[op](target, value)


def guarded_apply(func: Any, *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


class Run:
    """One run's state (refusal, printed text, module views, random generator) and the
    guards that touch it, as bound methods.

    Nothing else refers to a Run: user code reaches it only through the guards in its own
    globals and builtins, so code left over from a run (a generator finalised later, a
    stored callback) could only ever print into, seed or refuse in its own finished run,
    never the one in progress. (execute() makes sure no such code survives a run anyway.)
    """

    __slots__ = ("violation", "stdout", "stdout_len", "stdout_limit", "stdout_truncated",
                 "modules", "executed")

    def __init__(self, stdout_limit: int) -> None:
        self.violation: str | None = None
        self.stdout: list[str] = []
        self.stdout_len = 0
        self.stdout_limit = stdout_limit
        self.stdout_truncated = False
        self.modules: dict[str, _Module] = {}
        self.executed = False  # False while only compiling: a compile refusal keeps the worker

    def getattr(self, ob: Any, name: Any, default: Any = _MISSING) -> Any:
        """`_getattr_` and the `getattr` builtin."""
        if type(name) is not str:
            raise TypeError("attribute name must be a string")
        if name.startswith("_") or name in FORBIDDEN_ATTRS:
            _refuse(self, f'access to attribute "{name}" is not allowed')
        if name in ("format", "format_map") and (
                isinstance(ob, str) or (isinstance(ob, type) and issubclass(ob, str))):
            _refuse(self, "str.format and str.format_map are not allowed (use f-strings or %)")
        if name == "obj" and isinstance(ob, BaseException):
            _refuse(self, 'access to attribute "obj" of an exception is not allowed')
        value = safer_getattr(ob, name, default)
        if value is _MISSING:
            raise AttributeError(f"{type(ob).__name__!r} object has no attribute {name!r}")
        return value

    def hasattr(self, ob: Any, name: Any) -> bool:
        return self.getattr(ob, name, _MISSING) is not _MISSING

    def write(self, ob: Any) -> Any:
        """`_write_`: items of containers the run built may change; nothing else may.

        Stricter than RestrictedPython's full_write_guard (no `_guarded_writes` protocol) and
        wider for containers (dict/list/deque subclasses such as Counter and defaultdict).
        """
        if isinstance(ob, _WRITABLE):
            return ob
        if isinstance(ob, _Module):
            _refuse(self, f"cannot modify module {ob._name}")
        _refuse(self, f"cannot modify attributes or items of {type(ob).__name__} objects")

    def import_(self, name: Any, globals: Any = None, locals: Any = None,
                fromlist: Any = (), level: int = 0) -> Any:
        if type(name) is str and level == 0:
            if name in ALLOWED_MODULES:
                return self.module(name)
            if name in INTERNAL_IMPORTS and name in sys.modules:
                return None
        allowed = ", ".join(sorted(ALLOWED_MODULES))
        _refuse(self, f"import of {name!r} is not allowed (allowed: {allowed})")

    def module(self, name: str) -> _Module:
        view = self.modules.get(name)
        if view is None:
            attrs: Any = MODULES[name]._attrs
            if name == "random":  # a generator of this run's own, seeded from the OS
                attrs = _pick(random.Random(), _RANDOM)
            view = self.modules[name] = _Module(name, attrs, self)
        return view

    def printer(self, _getattr_: Any = None) -> BoundedPrint:
        """`_print_`."""
        return BoundedPrint(self, _getattr_)

    def write_stdout(self, text: str) -> None:
        room = self.stdout_limit - self.stdout_len
        if room <= 0:
            self.stdout_truncated = self.stdout_truncated or bool(text)
            return
        if len(text) > room:
            text = text[:room]
            self.stdout_truncated = True
        self.stdout.append(text)
        self.stdout_len += len(text)

    def globals(self) -> dict[str, Any]:
        """Fresh globals and a fresh builtins dict, every guard bound to this run."""
        builtins = dict(BASE_BUILTINS)
        builtins.update(getattr=self.getattr, hasattr=self.hasattr, __import__=self.import_)
        for name, refuse in _REFUSERS:
            builtins[name] = types.MethodType(refuse, self)  # 29 of them: kept cheap
        return {
            "__builtins__": builtins,
            "__name__": "sandbox",
            "_getattr_": self.getattr,
            "_getitem_": guarded_getitem,
            "_getiter_": iter,
            "_write_": self.write,
            "_inplacevar_": guarded_inplacevar,
            "_apply_": guarded_apply,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_print_": self.printer,
        }


class BoundedPrint(PrintCollector):
    """What `_print_` makes: every print of a run goes into its run's bounded buffer
    (`printed` reads it)."""

    def __init__(self, run: Run, _getattr_: Any = None) -> None:
        super().__init__(_getattr_)
        self._run = run

    def write(self, text: str) -> None:
        self._run.write_stdout(text)

    def flush(self) -> None:
        pass

    def __call__(self) -> str:
        return "".join(self._run.stdout)


#: Builtins that exist in Python but not here: calling them is a recorded refusal.
REFUSED_BUILTINS = (
    "eval exec compile open input help breakpoint globals locals vars dir type object super "
    "memoryview bytearray classmethod staticmethod property exit quit license credits "
    "copyright setattr delattr aiter anext"
).split()


def _refuser(name: str) -> Any:
    def refuse(run: Run, *args: Any, **kwargs: Any) -> Any:
        _refuse(run, f"{name}() is not available in the sandbox")
    refuse.__name__ = refuse.__qualname__ = name
    return refuse


#: (name, function of the run): each run binds them to itself (Run.globals).
_REFUSERS = tuple((name, _refuser(name)) for name in REFUSED_BUILTINS)


def _base_builtins() -> dict[str, Any]:
    """The builtins every run starts from; Run.globals() adds the ones bound to the run."""
    b = dict(safe_builtins)
    for name in ("__build_class__", "setattr", "delattr", "_getattr_"):
        b.pop(name, None)
    # utility_builtins also carries math/random/string modules; only its types are taken.
    b.update({k: utility_builtins[k] for k in ("set", "frozenset")})
    # limited_builtins' list/tuple refuse strings and its range stops at 1000 elements;
    # the plain ones are used (the CPU and memory limits bound them).
    b.update({k: v for k, v in limited_builtins.items() if k not in ("range", "list", "tuple")})
    b.update({
        "list": list, "tuple": tuple, "dict": dict, "range": range, "sorted": sorted,
        "reversed": reversed, "zip": zip, "enumerate": enumerate, "map": map,
        "filter": filter, "min": min, "max": max, "sum": sum, "any": any, "all": all,
        "iter": iter, "next": next, "bytes": bytes,
    })
    return b


BASE_BUILTINS = _base_builtins()


# --------------------------------------------------------------------------- compile policy

class SandboxPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus: no classes, only allowlisted imports, no `.mro`,
    and `x[k] op= v` (refused by RestrictedPython) rewritten through the guards."""

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        self.error(node, "class definitions are not allowed in the sandbox")
        return node

    def _check_module(self, node: ast.AST, name: str | None) -> None:
        if not name or name not in ALLOWED_MODULES:
            allowed = ", ".join(sorted(ALLOWED_MODULES))
            self.error(node, f"import of {name!r} is not allowed (allowed: {allowed})")

    def visit_Import(self, node: ast.Import) -> Any:
        for alias in node.names:
            self._check_module(node, alias.name)
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if node.level:
            self.error(node, "relative imports are not allowed")
        else:
            self._check_module(node, node.module)
        return super().visit_ImportFrom(node)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr in FORBIDDEN_ATTRS and node.attr not in INSPECT_ATTRIBUTES:
            self.error(node, f'"{node.attr}" is a restricted name in the sandbox.')
        return super().visit_Attribute(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        target = node.target
        if not isinstance(target, ast.Subscript) or isinstance(target.slice, ast.Slice):
            return super().visit_AugAssign(node)
        op = IOPERATOR_TO_STR[type(node.op)]
        container = self.visit(target.value)
        key = self.visit(target.slice)
        value = self.visit(node.value)
        t, k = self.gen_tmp_name(), self.gen_tmp_name()

        def name(n: str, ctx: ast.expr_context | None = None) -> ast.Name:
            return ast.Name(n, ctx or ast.Load())

        def call(f: str, *args: ast.expr) -> ast.Call:
            return ast.Call(func=name(f), args=list(args), keywords=[])

        stmts: list[ast.stmt] = [
            ast.Assign(targets=[name(t, ast.Store())], value=container),
            ast.Assign(targets=[name(k, ast.Store())], value=key),
            ast.Assign(
                targets=[ast.Subscript(value=call("_write_", name(t)), slice=name(k),
                                       ctx=ast.Store())],
                value=call("_inplacevar_", ast.Constant(op), call("_getitem_", name(t), name(k)),
                           value)),
        ]
        for stmt in stmts:
            copy_locations(stmt, node)
        return stmts


class CompileRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: Compiled code by BLAKE3 of the source: (module code, every code object in it) or, for a
#: refusal, (error code, message). Refusals are stored as plain data, not as exceptions: an
#: exception raised again would carry the tracebacks (and so the frames and inputs) of
#: every run that raised it before.
Compiled = tuple[types.CodeType, tuple[types.CodeType, ...]]
_CODE_CACHE: OrderedDict[bytes, Compiled | tuple[str, str]] = OrderedDict()


def compile_user_code(source: str, use_cache: bool = True) -> Compiled:
    """The module code and all code objects in it (for execute's survivor check)."""
    key = blake3(source.encode("utf-8", "surrogatepass")).digest() if use_cache else b""
    hit: Compiled | tuple[str, str] | None = _CODE_CACHE.get(key) if use_cache else None
    if hit is not None:
        _CODE_CACHE.move_to_end(key)
    else:
        try:
            code = _compile(source)
            hit = (code, _code_tree(code))
        except CompileRefused as refusal:
            hit = (refusal.code, refusal.message)
        if use_cache:
            _CODE_CACHE[key] = hit
            while len(_CODE_CACHE) > CODE_CACHE_SIZE:
                _CODE_CACHE.popitem(last=False)
    if isinstance(hit[0], str):
        raise CompileRefused(*hit)
    return hit


def _code_tree(code: types.CodeType) -> tuple[types.CodeType, ...]:
    found = [code]
    for c in found:  # grows while it is walked: every nested function, lambda, comprehension
        found.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return tuple(found)


def _compile(source: str) -> types.CodeType:
    try:
        tree = ast.parse(source, FILENAME, "exec")
    except SyntaxError as e:
        raise CompileRefused("SANDBOX_COMPILE_ERROR", f"line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise CompileRefused("SANDBOX_COMPILE_ERROR", f"cannot parse: {e}") from None
    try:
        result = compile_restricted_exec(tree, FILENAME, policy=SandboxPolicy)
    except (RecursionError, MemoryError):
        raise CompileRefused("SANDBOX_COMPILE_ERROR", "code is nested too deeply") from None
    except SyntaxError as e:  # compile() of the transformed tree (e.g. 'return' outside def)
        raise CompileRefused("SANDBOX_COMPILE_ERROR", f"line {e.lineno}: {e.msg}") from None
    if result.errors:
        first = result.errors[0]
        if first.startswith("Line "):
            first = "line " + first[5:]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise CompileRefused("SANDBOX_FORBIDDEN", first + more)
    assert result.code is not None  # RestrictedPython returns code when there are no errors
    return result.code


# --------------------------------------------------------------------------- JSON checks

class NotJson(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_output(value: Any, limit: int) -> bytes:
    """Refuse anything that is not plain JSON the ledger can store; bound the size."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    estimate = 0
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if v is None or t is bool:
            estimate += 4
        elif t is int:
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                raise NotJson("SANDBOX_OUTPUT_NOT_JSON",
                              "output holds an integer beyond +-(2^53-1)")
            estimate += 1
        elif t is float:
            if v != v or v in (math.inf, -math.inf):
                raise NotJson("SANDBOX_OUTPUT_NOT_JSON", "output holds NaN or Infinity")
            estimate += 1
        elif t is str:
            estimate += len(v) + 2
        elif t is list or t is tuple or t is dict:
            if depth >= MAX_JSON_DEPTH:
                raise NotJson("SANDBOX_OUTPUT_NOT_JSON",
                              f"output nests deeper than {MAX_JSON_DEPTH} levels")
            estimate += 2 + len(v)
            if t is dict:
                for k, item in v.items():
                    if type(k) is not str:
                        raise NotJson("SANDBOX_OUTPUT_NOT_JSON",
                                      f"output holds an object key of type {type(k).__name__}")
                    estimate += len(k) + 3
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)
        else:
            raise NotJson("SANDBOX_OUTPUT_NOT_JSON",
                          f"output holds a {t.__name__}, which is not a JSON value")
        if estimate > limit:
            raise NotJson("SANDBOX_OUTPUT_TOO_LARGE", f"output is larger than {limit} bytes")
    try:
        data = _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise NotJson("SANDBOX_OUTPUT_NOT_JSON",
                      "output holds a string with a lone surrogate (not valid Unicode)") from None
    if len(data) > limit:
        raise NotJson("SANDBOX_OUTPUT_TOO_LARGE",
                      f"output is {len(data)} bytes, larger than {limit}")
    return data


def _clean_text(text: str, limit: int) -> str:
    text = text[:limit].replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")


# --------------------------------------------------------------------------- limits

class Walls:
    """Process-wide numbers set once at start, and the limits currently in force."""
    hard_as: int = resource.RLIM_INFINITY
    baseline: int = 0
    baseline_rss_mb: float = 0.0
    cpu_soft: float = math.inf  # current RLIMIT_CPU soft limit, seconds
    as_mb: int | None = None  # memory_mb the RLIMIT_AS soft limit is set for


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _arm(cpu_ms: int, memory_mb: int, used: float) -> None:
    """Limits for one run. Syscalls only where something changes: the RLIMIT_CPU backstop
    stays put while it is between 0.5 s and 2 s above what this run may use, and RLIMIT_AS
    while the run asks for the same memory as the last one."""
    decimal.setcontext(decimal.Context())
    signal.setitimer(signal.ITIMER_PROF, cpu_ms / 1000)
    allowed = used + cpu_ms / 1000
    if not allowed + 0.5 <= Walls.cpu_soft <= allowed + 2:
        Walls.cpu_soft = math.ceil(allowed) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (Walls.cpu_soft, resource.RLIM_INFINITY))
    if Walls.hard_as != resource.RLIM_INFINITY and Walls.as_mb != memory_mb:
        soft = min(Walls.hard_as, Walls.baseline + memory_mb * MB)
        resource.setrlimit(resource.RLIMIT_AS, (soft, Walls.hard_as))
        Walls.as_mb = memory_mb


def _disarm(out_of_memory: bool) -> None:
    """The CPU timer stops; the address-space limit stays (the worker's own work between runs
    is small) unless the run ran out of memory, when the reply needs the headroom."""
    signal.setitimer(signal.ITIMER_PROF, 0)
    if out_of_memory and Walls.hard_as != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, (Walls.hard_as, Walls.hard_as))
        Walls.as_mb = None


def _depth() -> int:
    f: Any = sys._getframe()
    n = 0
    while f is not None:
        n += 1
        f = f.f_back
    return n


# --------------------------------------------------------------------------- running

def _user_line(tb: Any) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


#: An absolute path of two or more segments (not part of a URL or a relative path): what a
#: message of the standard library looks like when it names a file on the host.
_HOST_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"/:<>|,;()]+/)+[^\s'\"/:<>|,;()]*")


def _error(code: str, message: str) -> dict[str, str]:
    """An error for the reply; host paths in the message become `<path>`."""
    return {"code": code, "message": _HOST_PATH.sub("<path>", _clean_text(message, MAX_MESSAGE))}


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be rendered is still an error
        text = ""
    line = _user_line(exc.__traceback__)
    where = f"line {line}: " if line else ""
    name = type(exc).__name__
    return f"{where}{name}: {text[:MAX_MESSAGE]}" if text else f"{where}{name}"


def _memory_error(limits: dict[str, Any]) -> dict[str, str]:
    return _error("SANDBOX_MEMORY_LIMIT", f"memory limit of {limits['memory_mb']} MB exceeded")


def execute(req: dict[str, Any], run: Run) -> tuple[dict[str, Any] | None, bytes | None, bool]:
    """Run one request. Returns (error or None, output JSON bytes or None, retire).

    The worker is kept only after a run that ended ok and left nothing that can execute
    (see _sweep), or one refused at compile time (nothing of it executed). After any other
    failure it is retired without sweeping: the process ends, and its leftovers with it."""
    try:
        code, codes = compile_user_code(req["code"], req.get("cache", True))
    except CompileRefused as refusal:
        return _error(refusal.code, refusal.message), None, False
    run.executed = True
    before = _refcounts(codes)
    error, output = _call(code, req, run)
    if error is not None:
        return error, None, True
    survived = _sweep(codes, before)
    if run.violation is not None:  # refused by a finaliser of this run, during the sweep
        return _error("SANDBOX_FORBIDDEN", run.violation), None, True
    return None, output, survived


def _call(code: types.CodeType, req: dict[str, Any],
          run: Run) -> tuple[dict[str, Any] | None, bytes | None]:
    """Execute the module, call the entry, encode its output. Every reference this worker
    holds to the run's objects dies with this frame: input and context are taken out of
    the request and the globals are cleared (which breaks the function <-> globals cycles,
    so most of a run is freed right here, still inside its limits)."""
    limits = req["limits"]
    args = (req.pop("input", None), req.pop("context", None) or {})
    g = run.globals()
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_depth() + limits["recursion"])
    try:
        error, value = _invoke(code, g, req.get("entry", "main"), args, run, limits)
        if error is not None:
            return error, None
        try:
            return None, encode_output(value, limits["output_bytes"])
        except NotJson as e:
            return _error(e.code, e.message), None
        except MemoryError:
            return _memory_error(limits), None
        except (ValueError, RecursionError) as e:
            return _error("SANDBOX_OUTPUT_NOT_JSON", f"output cannot be encoded: {e}"), None
    finally:
        g.clear()
        sys.setrecursionlimit(old_limit)


def _invoke(code: types.CodeType, g: dict[str, Any], entry: str, args: tuple[Any, Any],
            run: Run, limits: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    try:
        exec(code, g)
        fn = g.get(entry)
        if not isinstance(fn, types.FunctionType):
            what = "is not defined" if fn is None else "is not a function"
            return _error("SANDBOX_NO_ENTRY", f"entry point {entry!r} {what}"), None
        nargs = fn.__code__.co_argcount
        if nargs >= 2:
            value = fn(*args)
        elif nargs == 1 or fn.__code__.co_flags & 0x04:
            value = fn(args[0])
        else:
            return _error("SANDBOX_NO_ENTRY",
                          f"{entry}() must take the input as its first parameter"), None
    except SandboxForbidden as e:
        return _error("SANDBOX_FORBIDDEN", run.violation or str(e)), None
    except RecursionError as e:
        return _error("SANDBOX_RECURSION",
                      _describe(e) + f" (limit {limits['recursion']})"), None
    except MemoryError:
        return _memory_error(limits), None
    except BaseException as e:  # noqa: BLE001 - SystemExit & co. from user code are errors too
        return _error("SANDBOX_RUNTIME_ERROR", _describe(e)), None
    if run.violation is not None:  # a refusal the code caught
        return _error("SANDBOX_FORBIDDEN", run.violation), None
    return None, value


def _refcounts(codes: tuple[types.CodeType, ...]) -> list[int]:
    return [sys.getrefcount(c) for c in codes]


def _sweep(codes: tuple[types.CodeType, ...], before: list[int]) -> bool:
    """Collect what the run left in reference cycles now, inside its limits: a suspended
    generator's `finally` or `with` exit runs here, in its own run, never later in another.
    Returns True when any code object of the run has gained a reference: a function,
    generator or frame of it survived (one re-armed by a finaliser, say), and only ending
    the process gets rid of it. Cycles without survivors cost nothing more: gc.freeze()
    at start keeps the worker's own objects out of this collection."""
    gc.collect()
    return _refcounts(codes) != before


def handle_run(req: dict[str, Any]) -> tuple[bytes, bool]:
    limits = req["limits"]
    run = Run(limits["stdout_bytes"])
    cpu0 = _cpu_seconds()
    _arm(limits["cpu_ms"], limits["memory_mb"], cpu0)
    retire = True
    try:
        error, output, retire = execute(req, run)
    except MemoryError:
        error, output = _memory_error(limits), None
    finally:
        _disarm(retire)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu1 = usage.ru_utime + usage.ru_stime
    # A worker whose heap grew a lot is replaced: the next run starts from a clean one.
    retire = retire or usage.ru_maxrss / 1024 > Walls.baseline_rss_mb + 64
    meta = {
        "type": "result",
        "ok": error is None,
        "error": error,
        "retire": retire,
        "executed": run.executed,
        "cpu_ms": round((cpu1 - cpu0) * 1000),
        "cpu_total_ms": round(cpu1 * 1000),
        "stdout_truncated": run.stdout_truncated,
        "stdout": _clean_text("".join(run.stdout), limits["stdout_bytes"]) if run.stdout else "",
    }
    head = _ENCODER.encode(meta).encode("utf-8")
    if output is None:
        return head, retire
    return head[:-1] + b',"output":' + output + b"}", retire


def handle_probe(req: dict[str, Any]) -> bytes:
    """Report what the second wall (namespace, chroot, privileges, rlimits) does, from
    trusted code: used by the tests and docs/sandbox.md, never reachable by user code.
    Each wall is tested on its own: RLIMIT_NOFILE first, then lifted to its hard limit for
    the other checks (which would otherwise all fail with EMFILE)."""
    out: dict[str, Any] = {
        "type": "probe", "pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(),
        "gid": os.getgid(), "groups": os.getgroups(), "environ": sorted(os.environ),
        "rlimits": {name: list(resource.getrlimit(getattr(resource, name))) for name in
                    ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE",
                     "RLIMIT_NPROC", "RLIMIT_CPU")},
    }

    def attempt(key: str, action: Any) -> None:
        try:
            out[key] = action()
        except Exception as e:  # noqa: BLE001 - the refusal is the finding
            out[key] = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"

    def open_fd() -> str:
        os.close(os.open("/", os.O_RDONLY))
        return "opened"

    def write_file() -> str:
        fd = os.open(req.get("write_path") or "/sandbox-probe",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        return "written"

    def connect() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", int(req.get("port") or 9)))
        return "connected"

    def fork() -> str:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return "forked"

    attempt("open_fd", open_fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        attempt("root_listing", lambda: os.listdir("/")[:20])
        attempt("write", write_file)
        attempt("connect", connect)
        attempt("fork", fork)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return json.dumps(out).encode("utf-8")


# --------------------------------------------------------------------------- protocol

class _Reader:
    """Frames from a pipe, reading as much as is there (one syscall per small frame)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = os.read(self.fd, max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError
            self.buf += chunk

    def frame(self) -> bytes:
        self._fill(4)
        (n,) = struct.unpack(">I", self.buf[:4])
        self._fill(4 + n)
        data = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return data


def _send(fd: int, payload: bytes) -> None:
    data = struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _vsz() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def harden(config: dict[str, Any]) -> dict[str, Any]:
    """Apply the process-level walls once. Returns what applied (sent in `ready`)."""
    info: dict[str, Any] = {"netns": False, "chroot": False, "dropped_to": None}
    libc = _libc()
    root = os.geteuid() == 0
    nobody = pwd.getpwnam(config.get("user") or "nobody") if root else None  # before chroot
    if root:
        info["netns"] = libc.unshare(CLONE_NEWNET) == 0
        jail = config.get("chroot")
        if jail:
            os.chroot(jail)
            os.chdir("/")
            info["chroot"] = True
    else:
        info["netns"] = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
        os.chdir("/")
    Walls.hard_as = Walls.baseline + (config["memory_mb"] + 64) * MB
    highest = max(config["fds"])
    resource.setrlimit(resource.RLIMIT_AS, (Walls.hard_as, Walls.hard_as))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, highest + 9))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    if nobody is not None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - would mean the drop did not happen
            raise RuntimeError("privilege drop failed: setuid(0) succeeded")
        info["dropped_to"] = nobody.pw_name
    info["no_new_privs"] = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    return info


#: Codecs of `encodings` that convert bytes to bytes (or str to str): str.encode and
#: bytes.decode refuse them and user code has no `codecs` module, so they are not loaded.
_NOT_TEXT_CODECS = frozenset({"base64_codec", "bz2_codec", "hex_codec", "quopri_codec",
                              "rot_13", "uu_codec", "zlib_codec"})


def _load_codecs() -> None:
    """Import every text codec now. Each is a module of `encodings` imported on first use,
    which once the walls are up fails (and named a host path in its error)."""
    folder = os.path.dirname(encodings.__file__)
    for entry in sorted(os.listdir(folder)):
        name, ext = os.path.splitext(entry)
        if ext == ".py" and not name.startswith("_") and name not in _NOT_TEXT_CODECS:
            try:
                codecs.lookup(name)
            except LookupError:  # `aliases` is no codec; mbcs and oem are Windows-only
                pass


def _seal_imports() -> None:
    """After the warm-up nothing can be imported (no filesystem): make every attempt fail
    at once with ModuleNotFoundError, without a filesystem call or a host path in the
    message (an unknown codec name, say). Loaded modules stay importable."""
    sys.meta_path.clear()
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path.clear()


def _ignore_unraisable(unraisable: Any) -> None:
    """An exception in a finaliser of user code: dropped (the default hook would format a
    traceback and read source files)."""


def _warm() -> None:
    """Exercise every allowed module and the whole run path once, before the walls go up
    (afterwards nothing can be imported: the filesystem is gone)."""
    hashlib.sha256(b"").hexdigest()
    hashlib.blake2b(b"").hexdigest()
    datetime.datetime.strptime("2024-01-02", "%Y-%m-%d").isoformat()
    datetime.datetime.now(datetime.UTC).astimezone()
    re.compile(r"(\w+)\s").findall("warm up ")
    json.loads(json.dumps({"a": [1, 2.5, None]}))
    str(decimal.Decimal("1.10") + 1)
    statistics.mean([1, 2, 3])
    statistics.stdev([1.0, 2.0, 3.0])
    random.Random().random()
    _load_codecs()
    warm = {"type": "run", "code": "import math\ndef main(x):\n    print(x)\n    return x",
            "input": 1, "cache": False,
            "limits": {"cpu_ms": 10000, "memory_mb": 1024, "recursion": 200,
                       "output_bytes": 1024, "stdout_bytes": 1024}}
    handle_run(warm)


def main() -> None:
    # A service manager's stop signal goes to the whole process group: the parent decides
    # when a worker ends (it finishes in-flight runs, then closes the pipe or SIGKILLs).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = _ignore_unraisable
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"memory_mb": 256}
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        Walls.baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _warm()
        Walls.baseline = _vsz()
        Walls.baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        config["fds"] = [proto_in, proto_out, 2]
        info = harden(config)
        _seal_imports()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses to start
        _send(proto_out, json.dumps({"type": "fatal",
                                     "message": f"{type(e).__name__}: {e}"}).encode("utf-8"))
        sys.exit(2)
    info.update({"type": "ready", "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
                 "baseline_mb": round(Walls.baseline / MB, 1),
                 "cpu_total_ms": round(_cpu_seconds() * 1000)})
    # Everything made so far lives as long as the worker: the collection after each run
    # (execute's sweep) then only looks at what was made since.
    gc.collect()
    gc.freeze()
    _send(proto_out, json.dumps(info).encode("utf-8"))
    reader = _Reader(proto_in)
    while True:
        try:
            req = json.loads(reader.frame())
        except EOFError:
            return
        kind = req.get("type")
        retire = False
        try:
            if kind == "run":
                reply, retire = handle_run(req)
            elif kind == "probe":
                reply = handle_probe(req)
            else:
                return
        except Exception as e:  # noqa: BLE001 - a worker bug: report it, then get replaced
            error = _error("SANDBOX_WORKER_DIED", f"internal error: {type(e).__name__}: {e}")
            reply = json.dumps({"type": "result", "ok": False, "error": error,
                                "retire": True}).encode("utf-8")
            retire = True
        _send(proto_out, reply)
        if retire:  # at once: an interpreter shutdown would run what user code left behind
            os._exit(0)


if __name__ == "__main__":
    main()
