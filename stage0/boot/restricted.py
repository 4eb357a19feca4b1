"""RestrictedPython for kernels: compile once per code hash, run with guarded builtins.

Kernels are trusted (signed by a trusted key) but still run restricted: no imports, no
underscore attributes, writes only to their own objects. Everything they can do to the world
comes through the capability context they are given (stage0/boot/capabilities.py).
"""

from __future__ import annotations

import builtins
from functools import lru_cache
from types import CodeType
from typing import Any

from RestrictedPython.compile import compile_restricted
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr,
)
from RestrictedPython.Limits import limited_builtins
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from stage0.errors import LoglineError

_PURE = ("dict", "set", "frozenset", "sorted", "min", "max", "sum", "any", "all", "enumerate",
         "zip", "map", "filter", "reversed", "list", "tuple")
_REMOVED = ("setattr", "delattr", "id", "__build_class__")

BUILTINS: dict[str, Any] = {
    **{k: v for k, v in safe_builtins.items() if k not in _REMOVED},
    **limited_builtins,
    **{name: getattr(builtins, name) for name in _PURE},
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    ops = {"+=": lambda: x + y, "-=": lambda: x - y, "*=": lambda: x * y, "/=": lambda: x / y,
           "//=": lambda: x // y, "%=": lambda: x % y, "|=": lambda: x | y, "&=": lambda: x & y}
    if op not in ops:
        raise TypeError(f"operator {op} is not allowed")
    return ops[op]()


def _apply(function: Any, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


_FORBIDDEN = frozenset(INSPECT_ATTRIBUTES) | {"mro"}


def kernel_getattr(ob: Any, name: Any, *default: Any) -> Any:
    """RestrictedPython's safer_getattr, plus the refusals the sandbox found necessary:
    frame/code introspection names, str.format (it reaches attributes through the format
    string) and an exception's `obj`."""
    if isinstance(name, str) and (
            name in _FORBIDDEN
            or (name in ("format", "format_map")
                and (isinstance(ob, str) or (isinstance(ob, type) and issubclass(ob, str))))
            or (name == "obj" and isinstance(ob, BaseException))):
        raise AttributeError(f'access to attribute "{name}" is not allowed in kernels')
    return safer_getattr(ob, name, *default)


def guards() -> dict[str, Any]:
    return {
        "__builtins__": BUILTINS,
        "_getattr_": kernel_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_write_": full_write_guard,
        "_inplacevar_": _inplacevar,
        "_apply_": _apply,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "__name__": "kernel",
        "__metaclass__": type,
    }


@lru_cache(maxsize=256)
def compile_code(source: str, filename: str) -> CodeType:
    """Compile restricted code; a refusal names the line. Cached by source (keyed by caller on
    the span's curr_hash in practice, so a new seq compiles once)."""
    try:
        return compile_restricted(source, filename=filename, mode="exec")
    except SyntaxError as exc:
        # RestrictedPython reports its refusals as a tuple of "Line N: ..." messages.
        msg = exc.msg
        detail = "; ".join(msg) if isinstance(msg, tuple) else f"line {exc.lineno}: {msg}"
        raise LoglineError("KERNEL_COMPILE_ERROR", detail, filename) from None


def load_main(source: str, filename: str, extra: dict[str, Any] | None = None) -> Any:
    """Execute the module body in fresh globals and return its `main`."""
    namespace = {**guards(), **(extra or {})}
    exec(compile_code(source, filename), namespace)  # noqa: S102 - restricted bytecode
    main = namespace.get("main")
    if not callable(main):
        raise LoglineError("KERNEL_NO_MAIN", "the code defines no main()", filename)
    return main
