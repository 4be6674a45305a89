"""Deterministic, contained execution of contract source code.

Theory of operation
-------------------
Every validator executes every transaction and must reach the same result, so
deployed contract code (code that organizations approved, but that a bank's
security team must still treat as untrusted) passes three gates:

1. **Verify** (:func:`verify_source`, at packaging, approval and commit time).
   The source is parsed and walked against an *allow-list* of syntax. Anything
   outside it is refused with the file, line and reason: imports other than
   ``kyodo.contract`` and ``typing.Any``; names that reach files, the network,
   processes, the clock or randomness; ``eval``/``exec``/``compile``/``open``/
   ``__import__``; every name and attribute starting with ``_`` (dunders are the
   door to the interpreter's internals); frame and code introspection attributes;
   floating point (``/``, float literals, ``float``); sets (their iteration order
   depends on ``PYTHONHASHSEED``); module and class level mutable values, ``global``
   and attribute assignment (state kept outside the ledger would differ between a
   node that restarted and one that did not); ``assert`` (stripped under ``-O``);
   bare ``except:`` and ``BaseException`` (they would swallow the budget).

2. **Rewrite** (:func:`compile_contract`). The verified tree is rewritten so the
   code meters itself: every loop iteration and every function call costs a
   step; every binary operation, slice, unpacking and method call goes through a
   guard that refuses results over the size limits *before* allocating them
   where the size is predictable (``*``, ``**``, ``<<``, ``join``, ``ljust``...)
   and charges steps in proportion to the size of what was allocated. Text
   conversion refuses objects whose ``repr`` carries a memory address.

3. **Run** under a :class:`Meter` (one per transaction, held thread-locally so
   queries on reader threads and the block executor never share one). Exceeding
   a limit raises :class:`ResourceLimitExceeded`, a ``BaseException``: contract
   code cannot catch it with ``except Exception``, and the executor re-checks the
   meter after the call, so even a ``finally: return`` cannot turn an exhausted
   budget into success. The same code and input exhaust the budget at the same
   step on every node, so a runaway transaction fails identically everywhere
   and the chain goes on.

Why this is written here and not taken from RestrictedPython: RestrictedPython
guards attribute access at run time for Zope's template model; it has no
deterministic metering, no notion of floats, sets or addresses in ``repr``
feeding state, and no rule against state kept in module globals, which are
what consensus needs. Adding those means rewriting the same tree anyway; an
allow-list verifier of a few hundred lines is easier to review than a
deny-list on top of a general sandbox. See ADR 0012.

What stays outside: the sandbox bounds CPU by steps and every allocation it can
see by size, so a transaction allocates at most about ``max_steps * 16``
elements in all; an allocation no guard predicts (a C routine amplifying its
input) ends in ``MemoryError``, which fails the transaction like any limit but
is not guaranteed to fail at the same point on machines of different memory.
"""

from __future__ import annotations

import ast
import builtins
import operator
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from kyodo.contracts.errors import CodeRejectedError, ContractError, ResourceLimitExceeded

__all__ = [
    "Meter",
    "SandboxLimits",
    "Violation",
    "charge_current",
    "check_no_address",
    "check_source",
    "compile_contract",
    "expanded_size",
    "metered",
    "verify_source",
]

_GUARD = "kyodo_guard_"
"""Prefix of names the rewriter introduces (a user name cannot collide: the
verifier refuses nothing with this prefix, but the guard's own name is looked
up from the module's globals, which contract code cannot rebind: module-level
assignments of that name are refused below)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    """Limits of one transaction's execution; the same on every node (consensus)."""

    max_steps: int = 100_000
    """Loop iterations + function calls + allocation cost, per transaction (about
    30-50 ms of the slowest code on this project's reference 2-core machine)."""
    max_depth: int = 48
    """Nested contract function calls (lambdas included)."""
    max_len: int = 1_000_000
    """Elements of a list, tuple or dict, or characters/bytes of a str/bytes."""
    max_int_bits: int = 4096
    """Size of an integer produced by arithmetic."""
    alloc_per_step: int = 16
    """Elements allocated per step charged."""
    max_source_bytes: int = 256 * 1024
    """Size of a contract's source."""
    max_block_steps: int = 1_000_000
    """Steps a proposer lets one block spend: once its transactions have used this
    many, the rest wait for the next block (so runaway transactions cannot make a
    block outlast the view-change timeout)."""


DEFAULT_LIMITS = SandboxLimits()


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason the verifier refused a source file."""

    filename: str
    line: int
    col: int
    reason: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.col}: {self.reason}"


_ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "kyodo.contract": frozenset(
        {"Context", "Contract", "ContractError", "Caller", "function", "sha256_hex"}
    ),
    "typing": frozenset({"Any"}),
}

_MODULE_REASONS = {
    "file": ("os", "io", "pathlib", "shutil", "tempfile", "glob", "fileinput", "mmap", "sqlite3"),
    "network": ("socket", "ssl", "http", "urllib", "requests", "asyncio", "selectors", "ftplib"),
    "process": ("subprocess", "multiprocessing", "threading", "signal", "sys", "ctypes", "gc"),
    "clock": ("time", "datetime", "calendar", "zoneinfo", "sched"),
    "randomness": ("random", "secrets", "uuid"),
    "introspection": ("inspect", "importlib", "builtins", "types", "code", "dis", "marshal"),
}

_NAME_REASONS: dict[str, str] = {
    **dict.fromkeys(("eval", "exec", "compile", "__import__"), "runs code the verifier never saw"),
    "open": "file access is not deterministic (contracts read only ledger state)",
    "input": "console access is not available to contracts",
    "print": "output goes nowhere on a validator; use ctx.emit for events",
    **dict.fromkeys(
        ("globals", "locals", "vars", "dir", "getattr", "setattr", "delattr", "hasattr"),
        "reflection reaches names the verifier cannot check",
    ),
    **dict.fromkeys(
        ("type", "object", "super", "classmethod", "staticmethod", "property"),
        "metaprogramming reaches the interpreter's internals",
    ),
    **dict.fromkeys(("id", "hash"), "differs between processes (memory layout, hash seed)"),
    **dict.fromkeys(
        ("float", "complex", "round"), "floating point is not allowed; use integers (minor units)"
    ),
    **dict.fromkeys(
        ("set", "frozenset"), "set iteration order depends on PYTHONHASHSEED; use a dict"
    ),
    "iter": "iter(callable, sentinel) loops without metering; use a for loop",
    **dict.fromkeys(("memoryview", "bytearray"), "mutable buffers are not allowed; use bytes"),
    **dict.fromkeys(("breakpoint", "help", "exit", "quit"), "interactive helpers"),
    "BaseException": "catching BaseException would swallow the execution budget",
}

_ATTR_REASONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "gi_frame",
            "gi_code",
            "gi_yieldfrom",
            "gi_running",
            "gi_suspended",
            "cr_frame",
            "cr_code",
            "cr_await",
            "cr_origin",
            "cr_running",
            "ag_frame",
            "ag_code",
            "ag_await",
            "ag_running",
            "tb_frame",
            "tb_next",
            "tb_lasti",
            "tb_lineno",
            "with_traceback",
            "f_back",
            "f_builtins",
            "f_code",
            "f_globals",
            "f_locals",
            "f_lasti",
            "f_lineno",
            "f_trace",
            "co_code",
            "co_consts",
            "co_names",
            "func_globals",
            "func_code",
            "mro",
        ),
        "frame and code introspection reaches the interpreter's internals",
    ),
    **dict.fromkeys(
        ("format", "format_map"),
        "format strings can reach attributes the verifier never saw; use an f-string",
    ),
    "mapping": "a dict view's mapping is a proxy the sandbox does not meter",
    "functions": "the function table is the executor's (contracts cannot read or change it)",
}

_DISALLOWED_NODES: dict[type[ast.AST], str] = {
    ast.Set: "set displays iterate in an order that depends on PYTHONHASHSEED; use a dict",
    ast.SetComp: "set comprehensions iterate in hash order; use a dict comprehension",
    ast.Global: "module globals are shared between transactions; keep state in the ledger",
    ast.Nonlocal: "nonlocal rebinding is not allowed; return values instead",
    ast.AsyncFunctionDef: "asynchronous code is not allowed in contracts",
    ast.Await: "asynchronous code is not allowed in contracts",
    ast.AsyncFor: "asynchronous code is not allowed in contracts",
    ast.AsyncWith: "asynchronous code is not allowed in contracts",
    ast.Yield: "generators are not allowed (use lists; generator expressions are fine)",
    ast.YieldFrom: "generators are not allowed (use lists; generator expressions are fine)",
    ast.With: "context managers are not available to contracts",
    ast.Assert: "assert is stripped under python -O; raise ContractError instead",
    ast.TryStar: "exception groups are not allowed in contracts",
    ast.Match: "match statements are not supported in contracts; use if/elif",
}

_ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset(
    {
        ast.Module, ast.Expr, ast.ImportFrom, ast.alias, ast.ClassDef, ast.FunctionDef,
        ast.Return, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Delete, ast.If, ast.For,
        ast.While, ast.Break, ast.Continue, ast.Pass, ast.Raise, ast.Try, ast.ExceptHandler,
        ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.IfExp, ast.Dict,
        ast.List, ast.Tuple, ast.ListComp, ast.DictComp, ast.GeneratorExp, ast.comprehension,
        ast.Subscript, ast.Slice, ast.Attribute, ast.Name, ast.Constant, ast.JoinedStr,
        ast.FormattedValue, ast.Starred, ast.keyword, ast.arg, ast.arguments, ast.Lambda,
        ast.NamedExpr, ast.Load, ast.Store, ast.Del, ast.And, ast.Or,
        ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
        ast.BitOr, ast.BitXor, ast.BitAnd,
        ast.Not, ast.USub, ast.UAdd, ast.Invert,
        ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In,
        ast.NotIn,
    }
)  # fmt: skip

_IMMUTABLE_CONSTANT = (int, str, bytes, bool, type(None))

_GUARDED_TYPES = frozenset({"int", "str", "bytes", "list", "tuple", "dict"})
"""Builtin types that stay the real types (for annotations and isinstance) but whose
calls the rewriter sends through a guard (text form, size of the copy)."""


def _bound_names(tree: ast.Module) -> frozenset[str]:
    """Every name the module binds anywhere (coarse: scopes are not told apart)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return frozenset(names)


def _walk_same_function(node: ast.AST) -> list[ast.AST]:
    """``node`` and its descendants, not entering nested functions, classes or lambdas."""
    found: list[ast.AST] = []
    stack = [node]
    while stack:
        current = stack.pop()
        found.append(current)
        for child in ast.iter_child_nodes(current):
            if not isinstance(child, ast.FunctionDef | ast.ClassDef | ast.Lambda):
                stack.append(child)
    return found


def _is_type_expression(node: ast.expr) -> bool:
    """Names, dotted names, ``X[Y, Z]``, ``X | Y`` and ``None``: nothing that computes."""
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return _is_type_expression(node.value)
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Subscript):
        return _is_type_expression(node.value) and _is_type_expression(node.slice)
    if isinstance(node, ast.Tuple):
        return all(_is_type_expression(e) for e in node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expression(node.left) and _is_type_expression(node.right)
    return False


_RESERVED_MEMBERS = frozenset({"functions"})
"""Contract members the executor relies on; a contract may not redefine them."""


def _module_reason(module: str) -> str:
    root = module.split(".", maxsplit=1)[0]
    for category, names in _MODULE_REASONS.items():
        if root in names:
            return f"{category} access is not deterministic"
    return "not on the allow-list"


class _Verifier(ast.NodeVisitor):
    def __init__(self, filename: str, limits: SandboxLimits) -> None:
        self.filename = filename
        self.limits = limits
        self.violations: list[Violation] = []
        self.type_refs: set[int] = set()
        """ids of Name nodes where a guarded type may appear uncalled (annotations,
        isinstance)."""

    def _allow_type_refs(self, node: ast.AST | None) -> None:
        if node is not None:
            self.type_refs.update(id(n) for n in ast.walk(node) if isinstance(n, ast.Name))

    def refuse(self, node: ast.AST, reason: str) -> None:
        self.violations.append(
            Violation(
                self.filename, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), reason
            )
        )

    def generic_visit(self, node: ast.AST) -> None:
        kind = type(node)
        if kind in _DISALLOWED_NODES:
            self.refuse(node, _DISALLOWED_NODES[kind])
            return
        if kind not in _ALLOWED_NODES:
            self.refuse(node, f"{kind.__name__} is not allowed in contracts")
            return
        super().generic_visit(node)

    # --- structure: what may appear at module and class level

    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            self._check_top_level(stmt, where="module")
        self.bound = _bound_names(node)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        for stmt in node.finalbody:
            for child in _walk_same_function(stmt):
                if isinstance(child, ast.Try) and child is not node:
                    self.refuse(
                        child,
                        "try inside 'finally' is not allowed (the compiled code doubles "
                        "with every level)",
                    )
                if isinstance(child, ast.Return | ast.Break | ast.Continue):
                    self.refuse(
                        child,
                        "return, break and continue in 'finally' would swallow errors "
                        "(the execution budget among them)",
                    )
        self.generic_visit(node)

    def _check_top_level(self, stmt: ast.stmt, *, where: str) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.ClassDef | ast.Pass):
            return
        if type(stmt) in _DISALLOWED_NODES:
            return  # refused with its own reason when visited
        if isinstance(stmt, ast.ImportFrom) and where == "module":
            return
        if isinstance(stmt, ast.Import):
            return  # refused with its reason by visit_Import
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # a docstring
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            value = stmt.value
            if value is not None and self._is_immutable(value):
                return
            self.refuse(
                stmt,
                f"{where}-level values must be immutable constants (int, str, bytes, tuples "
                "of them): a mutable value would carry state between transactions",
            )
            return
        self.refuse(stmt, f"only definitions and constants may appear at {where} level")

    def _is_immutable(self, value: ast.expr) -> bool:
        if isinstance(value, ast.Constant):
            return isinstance(value.value, _IMMUTABLE_CONSTANT)
        if isinstance(value, ast.Tuple):
            return all(self._is_immutable(e) for e in value.elts)
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
            return self._is_immutable(value.operand)
        if isinstance(value, ast.BinOp):  # 10**15, 60 * 1000: computed (metered) at load
            return self._is_immutable(value.left) and self._is_immutable(value.right)
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.refuse(node, f"import of {alias.name!r} is refused: {_module_reason(alias.name)}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        allowed = _ALLOWED_IMPORTS.get(module)
        if node.level or allowed is None:
            self.refuse(node, f"import from {module!r} is refused: {_module_reason(module)}")
            return
        for alias in node.names:
            if alias.name not in allowed:
                self.refuse(
                    node,
                    f"{module}.{alias.name} is not available to contracts "
                    f"(allowed: {', '.join(sorted(allowed))})",
                )
            if alias.asname is not None:
                self._check_name(node, alias.asname)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._check_name(node, node.name)
        if getattr(self, "depth_in_functions", 0):
            self.refuse(node, "classes are defined at module level only")
        if node.keywords:
            self.refuse(node, "class keywords (metaclass=...) are not allowed")
        if node.decorator_list:
            self.refuse(node, "class decorators are not allowed")
        for base in node.bases:
            if not isinstance(base, ast.Name):
                self.refuse(base, "a base class must be a plain name")
        for stmt in node.body:
            self._check_top_level(stmt, where="class")
            if isinstance(stmt, ast.FunctionDef) and stmt.name in _RESERVED_MEMBERS:
                self.refuse(stmt, f"{stmt.name!r} is reserved by Contract and may not be redefined")
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in _RESERVED_MEMBERS:
                        self.refuse(stmt, f"{target.id!r} is reserved by Contract")
        for child in node.bases + node.body:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth_in_functions = getattr(self, "depth_in_functions", 0) + 1
        try:
            self._visit_function(node)
        finally:
            self.depth_in_functions -= 1

    def _visit_function(self, node: ast.FunctionDef) -> None:
        self._check_name(node, node.name)
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if not (isinstance(target, ast.Name) and target.id == "function"):
                self.refuse(
                    decorator,
                    "only @function and @function(...) may decorate a function "
                    "(a decorator's closure would carry state between transactions)",
                )
        args = node.args
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            if not self._is_immutable(default):
                self.refuse(default, "default values must be immutable constants")
        for arg in args.posonlyargs + args.args + args.kwonlyargs:
            self._check_annotation(arg.annotation)
        for extra in (args.vararg, args.kwarg):
            if extra is not None:
                self._check_annotation(extra.annotation)
        self._check_annotation(node.returns)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in _GUARDED_TYPES:
                self.type_refs.add(id(func))
            elif func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                kinds = node.args[1]
                names = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
                if all(isinstance(n, ast.Name) for n in names):
                    self._allow_type_refs(kinds)
                else:
                    self.refuse(kinds, f"{func.id}() takes a class name or a tuple of names")
        self.generic_visit(node)

    def _check_annotation(self, annotation: ast.expr | None) -> None:
        if annotation is None:
            return
        self._allow_type_refs(annotation)
        for child in ast.walk(annotation):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                self.refuse(child, "string annotations are not allowed (they are evaluated later)")
                return
        if not _is_type_expression(annotation):
            self.refuse(
                annotation,
                "an annotation must be a type (a name, X[Y], X | None), not an expression",
            )

    # --- names and attributes

    def _check_name(self, node: ast.AST, name: str) -> None:
        if name.startswith("_") and name != "_":
            self.refuse(
                node,
                f"name {name!r}: names starting with '_' are reserved (dunders reach internals)",
            )
        elif name in _NAME_REASONS:
            self.refuse(node, f"{name!r} is not available: {_NAME_REASONS[name]}")
        elif name.startswith(_GUARD):
            self.refuse(node, f"name {name!r} is reserved for the sandbox")

    def visit_Name(self, node: ast.Name) -> None:
        self._check_name(node, node.id)
        bound = getattr(self, "bound", None)
        if (
            isinstance(node.ctx, ast.Load)
            and bound is not None
            and node.id not in bound
            and node.id not in KNOWN_BUILTINS
            and node.id not in _NAME_REASONS
            and not node.id.startswith("_")
        ):
            self.refuse(node, f"unknown name {node.id!r}: not defined, imported or a builtin")
        if node.id in _GUARDED_TYPES and id(node) not in self.type_refs:
            self.refuse(
                node,
                f"{node.id!r} may only be called, annotated or used in isinstance "
                f"(its guarded form is applied at the call); write lambda x: {node.id}(x)",
            )

    def visit_arg(self, node: ast.arg) -> None:
        self._check_name(node, node.arg)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.refuse(node, f"attribute {node.attr!r}: names starting with '_' reach internals")
        elif node.attr in _ATTR_REASONS:
            self.refuse(node, f"attribute {node.attr!r}: {_ATTR_REASONS[node.attr]}")
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.refuse(
                node,
                "attribute assignment is not allowed: objects outside the ledger carry no "
                "state between transactions",
            )
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None:
            self._check_name(node, node.arg)
        self.generic_visit(node)

    # --- values and operators

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, float | complex):
            self.refuse(node, "floating point is not allowed; use integers (minor units)")
        elif value is Ellipsis:
            self.refuse(node, "Ellipsis is not allowed")
        elif isinstance(value, str | bytes) and len(value) > self.limits.max_len:
            self.refuse(node, "literal is over the size limit")
        elif isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            self.refuse(node, "integer literal is over the size limit")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Div):
            self.refuse(node, "'/' yields floating point; use '//' and integers")
            return
        if isinstance(node.op, ast.MatMult):
            self.refuse(node, "'@' is not supported")
            return
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Subscript) and isinstance(part.slice, ast.Slice):
                    self.refuse(part, "assigning to a slice is not allowed; build a new list")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.Div):
            self.refuse(node, "'/=' yields floating point; use '//=' and integers")
            return
        if not isinstance(node.target, ast.Name | ast.Subscript):
            self.refuse(node, "augmented assignment only to names and items")
        self.generic_visit(node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        spec = node.format_spec
        if spec is not None:
            text = ""
            for part in spec.values if isinstance(spec, ast.JoinedStr) else [spec]:
                if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                    self.refuse(node, "format specifications must be literal")
                    return
                text += part.value
            digits = "".join(c if c.isdigit() else " " for c in text).split()
            if any(int(d) > 1000 for d in digits):
                self.refuse(node, "format width or precision over 1000")
        self.visit(node.value)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.refuse(node, "bare 'except:' would swallow the execution budget; name the error")
        if node.name is not None:
            self._check_name(node, node.name)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if not isinstance(target, ast.Name | ast.Subscript):
                self.refuse(target, "del only of names and items")
            elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice):
                self.refuse(target, "deleting a slice is not allowed; build a new list")
        self.generic_visit(node)


def check_source(
    source: str, filename: str = "<contract>", limits: SandboxLimits = DEFAULT_LIMITS
) -> list[Violation]:
    """Every reason ``source`` may not run as a contract (empty: it may)."""
    if len(source.encode()) > limits.max_source_bytes:
        return [Violation(filename, 0, 0, f"source is over {limits.max_source_bytes} bytes")]
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [Violation(filename, exc.lineno or 0, exc.offset or 0, f"syntax error: {exc.msg}")]
    except ValueError as exc:  # e.g. NUL bytes
        return [Violation(filename, 0, 0, f"source cannot be parsed: {exc}")]
    except (RecursionError, MemoryError):  # the parser's own limits: 1+1+1+... x 10,000
        return [Violation(filename, 0, 0, "source is nested too deeply to parse")]
    verifier = _Verifier(filename, limits)
    try:
        verifier.visit(tree)
    except RecursionError:
        return [Violation(filename, 0, 0, "source is nested too deeply")]
    return verifier.violations


def verify_source(
    source: str, filename: str = "<contract>", limits: SandboxLimits = DEFAULT_LIMITS
) -> ast.Module:
    """The parsed tree of ``source``; raise CodeRejectedError listing every violation."""
    violations = check_source(source, filename, limits)
    if violations:
        raise CodeRejectedError(filename, tuple(str(v) for v in violations))
    return ast.parse(source, filename=filename)


# --------------------------------------------------------------------------- meter


class Meter:
    """The steps and depth a transaction has left (one per execution, never shared)."""

    __slots__ = ("depth", "exhausted", "limits", "steps_left")

    def __init__(self, limits: SandboxLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.steps_left = limits.max_steps
        self.depth = 0
        self.exhausted: str | None = None
        """Why a limit was exceeded (None while within limits)."""

    def fail(self, reason: str) -> ResourceLimitExceeded:
        """Record the first exceeded limit and return the error to raise."""
        if self.exhausted is None:
            self.exhausted = reason
        return ResourceLimitExceeded(self.exhausted)

    def charge(self, steps: int) -> None:
        """Spend ``steps``; raise once the budget is gone."""
        self.steps_left -= steps
        if self.steps_left < 0:
            raise self.fail(f"execution budget of {self.limits.max_steps} steps exceeded")


_current = threading.local()


class metered:
    """``with metered(meter):`` runs sandboxed code of this thread under ``meter``."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.outer: Meter | None = None

    def __enter__(self) -> Meter:
        self.outer = getattr(_current, "meter", None)
        _current.meter = self.meter
        return self.meter

    def __exit__(self, *exc: object) -> None:
        _current.meter = self.outer


def charge_current(steps: int) -> None:
    """Charge the meter of this thread's running execution, if there is one (trusted
    code, such as the context's ``put``, pays for the work a contract asks of it)."""
    meter: Meter | None = getattr(_current, "meter", None)
    if meter is not None and steps > 0:
        meter.charge(steps)


def _meter() -> Meter:
    meter: Meter | None = getattr(_current, "meter", None)
    if meter is None:
        # Sandboxed code runs only inside metered(); reaching here is a bug of ours.
        raise AssertionError("sandboxed code called outside a metered execution")
    return meter


_SIZED = (str, bytes, list, tuple, dict)
_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_GROWING_METHODS = frozenset({"append", "extend", "insert", "update", "setdefault"})
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _check_attr_name(name: str) -> None:
    if not isinstance(name, str) or name.startswith("_") or name in _ATTR_REASONS:
        raise ContractError(f"attribute {name!r} is not available to contracts")


def _bound_call(obj: Any, name: str) -> Callable[..., Any]:
    def method(*args: Any, **kwargs: Any) -> Any:
        return Guards.call(obj, name, *args, **kwargs)

    return method


def _check_size(meter: Meter, value: Any) -> Any:
    """Charge for ``value``'s allocation; refuse it if over the limits."""
    limits = meter.limits
    if isinstance(value, _SIZED):
        n = len(value)
        if n > limits.max_len:
            raise meter.fail(f"a value of {n} elements is over the limit of {limits.max_len}")
        meter.charge(1 + n // limits.alloc_per_step)
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > limits.max_int_bits:
            raise meter.fail(f"an integer of {value.bit_length()} bits is over the limit")
    elif isinstance(value, set | frozenset):
        raise ContractError("sets iterate in hash order and are not allowed; use a dict")
    return value


def _predict(meter: Meter, n: int) -> None:
    """Refuse an allocation of ``n`` elements before making it."""
    if n > meter.limits.max_len:
        raise meter.fail(f"a value of {n} elements is over the limit of {meter.limits.max_len}")


_SCALAR_TEXT = (int, str, bytes, bool, type(None))
_CONTAINERS = (list, tuple, dict)
_ADDRESS = " at 0x"
"""How CPython shows a memory address in a repr (``<function f at 0x7f...>``)."""


def check_no_address(text: str) -> str:
    """Refuse text that carries a memory address: it differs between processes."""
    if _ADDRESS in text:
        raise ContractError(
            "a value's text shows a memory address, which differs between nodes "
            "(functions, classes and objects have no deterministic text form)"
        )
    return text


def expanded_size(value: Any, cap: int, *, max_depth: int = 64) -> int:
    """How many elements a walk of ``value`` visits (shared parts counted each time they
    are reached, as ``==``, ``repr`` and encoding do), up to ``cap + 1``.

    Computed over the distinct containers only, so ``a = [a, a]`` twenty times costs
    twenty visits to find that it expands to a million. Nesting deeper than
    ``max_depth`` is refused (deterministically, before C code recurses into it).
    """
    if isinstance(value, str | bytes):
        return 1 + len(value) // _TEXT_PER_UNIT
    if not isinstance(value, _CONTAINERS):
        return 1
    memo: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        key = id(node)
        known = memo.get(key)
        if known is not None:
            return known
        if depth > max_depth:
            raise ContractError(f"a value nested deeper than {max_depth} levels is not allowed")
        flat = _flatten_pairs(list(node.items()) if isinstance(node, dict) else node, node)
        total = 1 + len(node)
        kinds = set(map(type, flat))
        if str in kinds or bytes in kinds:  # text counts by its length, as encoding it does
            total += sum(len(i) for i in flat if type(i) in (str, bytes)) // _TEXT_PER_UNIT
        if int in kinds:  # a big integer's text is long and slow to make
            total += sum(i.bit_length() for i in flat if type(i) is int) // 256
        if not _CONTAINERS_IN.isdisjoint(kinds):
            for item in flat:
                if isinstance(item, _CONTAINERS):
                    total += size(item, depth + 1) - 1
                    if total > cap:
                        break
        memo[key] = total
        return total

    return size(value, 0)


_TEXT_PER_UNIT = 16
"""Characters or bytes of text counted as one element by ``expanded_size``."""


_CONTAINERS_IN = frozenset(_CONTAINERS)


def _flatten_pairs(items: Any, node: Any) -> Any:
    if isinstance(node, dict):
        return [part for pair in items for part in pair]
    return items


def _metered_items(meter: Meter, items: Iterator[Any]) -> Iterator[Any]:
    per = meter.limits.alloc_per_step
    for item in items:
        meter.steps_left -= 1
        if type(item) in _CONTAINERS_IN:  # what consumes it may hash or compare all of it
            meter.steps_left -= _walk_cost(meter, item) // per
        if meter.steps_left < 0:
            raise meter.fail(f"execution budget of {meter.limits.max_steps} steps exceeded")
        yield item


class Guards:
    """The functions rewritten code calls; bound in a contract module as ``kyodo_guard_``."""

    __slots__ = ()

    # steps and depth

    @staticmethod
    def steps(count: int) -> None:
        """A loop iteration whose body has ``count`` statements."""
        _meter().charge(count)

    @staticmethod
    def unary(op: str, value: Any) -> Any:
        meter = _meter()
        meter.charge(1)
        result = _UNARY[op](value)
        return _check_size(meter, result)

    @staticmethod
    def enter() -> None:
        meter = _meter()
        meter.depth += 1
        if meter.depth > meter.limits.max_depth:
            raise meter.fail(f"calls nested deeper than {meter.limits.max_depth}")
        meter.charge(1)

    @staticmethod
    def leave() -> None:
        _meter().depth -= 1

    @staticmethod
    def it(iterable: Any) -> Iterator[Any]:
        """The iterator a loop or comprehension runs over: a step to create (a generator
        expression that is never consumed still costs), a step per item."""
        if isinstance(iterable, set | frozenset):
            raise ContractError("iterating a set is unordered; use sorted(...) or a dict")
        meter = _meter()
        meter.charge(1)
        return _metered_items(meter, iter(iterable))

    @staticmethod
    def lam(fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            Guards.enter()
            try:
                return fn(*args, **kwargs)
            finally:
                Guards.leave()

        return counted

    # operators

    @staticmethod
    def binop(op: str, left: Any, right: Any) -> Any:
        meter = _meter()
        meter.charge(1)
        _precheck(meter, op, left, right)
        return _check_size(meter, _BINOPS[op](left, right))

    @staticmethod
    def iop(op: str, left: Any, right: Any) -> Any:
        meter = _meter()
        meter.charge(1)
        _precheck(meter, op, left, right)
        return _check_size(meter, _IOPS[op](left, right))

    @staticmethod
    def attr(obj: Any, name: str) -> Any:
        """An attribute read without calling it: a method comes back guarded, so a
        method kept in a variable is metered like ``obj.method(...)``."""
        _check_attr_name(name)
        _meter().charge(1)
        value = getattr(obj, name)
        for raw, guarded in _RAW_TYPES:
            if value is raw:
                return guarded
        if callable(value) and not isinstance(value, type):
            return _bound_call(obj, name)
        return value

    @staticmethod
    def rethrow(error: BaseException) -> None:
        """First statement of every ``except`` block: limits stay uncatchable, and the
        caught error's message loses any memory address Python put in it."""
        if isinstance(error, MemoryError):
            raise _meter().fail("out of memory")
        if isinstance(error, RecursionError):
            raise _meter().fail("recursion too deep")
        meter = _meter()
        meter.charge(1 + sum(len(a) for a in error.args if isinstance(a, str)) // _TEXT_PER_UNIT)
        error.args = tuple(
            _HEX_ADDRESS.sub("0x?", a) if isinstance(a, str) else a for a in error.args
        )

    @staticmethod
    def slice(value: Any, lower: Any, upper: Any, stride: Any) -> Any:
        return _check_size(_meter(), value[lower:upper:stride])

    @staticmethod
    def star(value: Any) -> Any:
        if isinstance(value, set | frozenset):
            raise ContractError("unpacking a set is unordered; use sorted(...)")
        meter = _meter()
        if isinstance(value, _SIZED):
            _check_size(meter, value)
            return value
        return _check_size(meter, list(Guards.it(value)))

    @staticmethod
    def invoke(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """A call of a plain name (a builtin, a class, a function): a step, and its result
        charged by size like any allocation."""
        meter = _meter()
        meter.charge(1)
        return _check_size(meter, fn(*args, **kwargs))

    @staticmethod
    def pending() -> None:
        """First statement of every ``finally`` block: a MemoryError or RecursionError
        in flight becomes a limit, so the block cannot replace it with another error."""
        error = sys.exc_info()[1]
        if isinstance(error, MemoryError):
            raise _meter().fail("out of memory")
        if isinstance(error, RecursionError):
            raise _meter().fail("recursion too deep")

    @staticmethod
    def call(obj: Any, name: str, /, *args: Any, **kwargs: Any) -> Any:
        _check_attr_name(name)
        meter = _meter()
        meter.charge(1)
        if name in ("join", "extend") and args and not isinstance(args[0], _SIZED):
            args = (_check_size(meter, list(Guards.it(args[0]))), *args[1:])
        if isinstance(obj, _DICT_VIEWS):
            receiver = list(obj)  # type: ignore[call-overload]
            meter.charge(_walk_cost(meter, receiver) // meter.limits.alloc_per_step)
            for arg in args:
                if isinstance(arg, _SIZED):
                    meter.charge(_walk_cost(meter, arg) // meter.limits.alloc_per_step)
        if isinstance(obj, _SIZED):
            _charge_work(meter, obj, name, args)
            if isinstance(obj, str | bytes | list):
                _predict_method(meter, obj, name, args, kwargs)
        elif isinstance(obj, int) and name == "to_bytes":
            length = args[0] if args else kwargs.get("length", 1)
            if isinstance(length, int):
                _predict(meter, length)
        result = getattr(obj, name)(*args, **kwargs)
        if (
            isinstance(obj, list | dict)
            and name in _GROWING_METHODS
            and len(obj) > meter.limits.max_len
        ):
            raise meter.fail(f"a value of {len(obj)} elements is over the limit")
        return _check_size(meter, result)

    @staticmethod
    def operand(value: Any) -> Any:
        """A comparison operand: comparing (``==``, ``in``) walks all of it."""
        meter = _meter()
        if isinstance(value, _SIZED):
            meter.charge(1 + _walk_cost(meter, value) // meter.limits.alloc_per_step)
        elif isinstance(value, _DICT_VIEWS):
            walked = list(value)  # type: ignore[call-overload]
            meter.charge(1 + _walk_cost(meter, walked) // meter.limits.alloc_per_step)
        elif isinstance(value, range):
            meter.charge(1 + len(value) // meter.limits.alloc_per_step)
        else:
            meter.charge(1)
        return value

    @staticmethod
    def display(value: Any) -> Any:
        """A list, tuple or dict display: charged by its length like any allocation."""
        return _check_size(_meter(), value)

    @staticmethod
    def key(value: Any) -> Any:
        """A subscript or dict-display key: hashing a tuple walks all of it."""
        if isinstance(value, tuple):
            meter = _meter()
            meter.charge(_walk_cost(meter, value) // meter.limits.alloc_per_step)
        return value

    @staticmethod
    def joined(value: str) -> str:
        """An f-string's result: size-checked like any other allocation."""
        return check_no_address(_check_size(_meter(), value))

    @staticmethod
    def typecall(name: str, /, *args: Any, **kwargs: Any) -> Any:
        return _TYPE_CALLS[name](*args, **kwargs)

    @staticmethod
    def text(value: Any) -> Any:
        """An f-string value: refuse before formatting what would expand too much."""
        if isinstance(value, BaseException):
            walked: Any = value.args
        elif isinstance(value, _DICT_VIEWS):
            walked = list(value)  # type: ignore[call-overload]
        else:
            walked = value
        if isinstance(walked, _CONTAINERS):
            meter = _meter()
            units = expanded_size(walked, meter.limits.max_len)
            if units > meter.limits.max_len:
                raise meter.fail("the text of this value would be over the size limit")
            meter.charge(units // meter.limits.alloc_per_step)
        return value


_REVERSE_SEARCHES = frozenset({"rfind", "rindex", "rsplit", "rpartition"})
_CODECS = frozenset({"utf-8", "utf8", "ascii", "latin-1", "latin1", "iso-8859-1"})

_CONSTANT_TIME_METHODS = frozenset(
    {"append", "get", "setdefault", "keys", "values", "items", "popitem", "clear", "extend",
     "update", "join"}
)  # fmt: skip
"""Methods whose work does not grow with the receiver's size (their arguments' sizes
are charged all the same)."""


def _walk_cost(meter: Meter, value: Any) -> int:
    """Elements hashing or comparing ``value`` visits (shared parts each time they are
    reached). Refuses nesting deeper than 64 before C code recurses into it: hashing a
    deeply nested tuple has no recursion check in CPython and would crash the node."""
    if isinstance(value, _CONTAINERS):
        return expanded_size(value, max(meter.steps_left, 0) * meter.limits.alloc_per_step)
    return len(value) if isinstance(value, _SIZED) else 1


def _charge_work(meter: Meter, obj: Any, name: str, args: tuple[Any, ...]) -> None:
    """Charge, before it runs, work that grows with the receiver and the arguments:
    ``find``, ``index``, ``count``, ``insert``, ``sort``, ``copy``... on a large value
    would otherwise cost one step each."""
    per = meter.limits.alloc_per_step
    work = sum(_walk_cost(meter, a) for a in args if isinstance(a, _SIZED))
    if name == "pop" and isinstance(obj, list) and not args:
        pass  # popping the last element is constant time
    elif name == "sort":
        work += _walk_cost(meter, obj) * 4  # n log n, with n at most max_len
    elif name in _REVERSE_SEARCHES and args and isinstance(args[0], str | bytes):
        work += len(obj) * max(len(args[0]), 1)  # CPython's reverse search is quadratic
    elif name in ("strip", "lstrip", "rstrip") and args and isinstance(args[0], str | bytes):
        work += len(obj) * max(len(args[0]), 1)  # each character against every one in chars
    elif name not in _CONSTANT_TIME_METHODS:
        work += _walk_cost(meter, obj)
    if work >= per:
        meter.charge(work // per)


def _predict_method(meter: Meter, obj: Any, name: str, args: tuple[Any, ...], kw: Any) -> None:
    if name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
        _predict(meter, args[0])
    elif name == "expandtabs":
        tab = args[0] if args else kw.get("tabsize", 8)
        if isinstance(tab, int):
            _predict(meter, len(obj) * max(tab, 1))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str | bytes):
        old, new = args[0], args[1]
        if isinstance(new, str | bytes):
            count = obj.count(old) if old else len(obj) + 1
            _predict(meter, len(obj) + count * len(new))
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, list | tuple):
            total = sum(len(i) if isinstance(i, str | bytes) else 0 for i in items)
            _predict(meter, total + len(obj) * len(items))
    elif name == "translate" and args:
        table = args[0]
        values = list(table.values()) if isinstance(table, dict) else table
        if isinstance(values, list | tuple):
            longest = max((len(v) for v in values if isinstance(v, str | bytes)), default=1)
            _predict(meter, len(obj) * max(longest, 1))
    elif name in ("encode", "decode"):
        _check_codec(args[0] if args else kw.get("encoding", "utf-8"))
    elif name == "extend" and args and isinstance(obj, list):
        extra = args[0]
        if isinstance(extra, _SIZED):
            _predict(meter, len(obj) + len(extra))


def _precheck(meter: Meter, op: str, left: Any, right: Any) -> None:
    limits = meter.limits
    if op in ("*", "*=") and isinstance(right, int) and isinstance(left, _SIZED):
        _predict(meter, len(left) * max(right, 0))
    elif op in ("*", "*=") and isinstance(left, int) and isinstance(right, _SIZED):
        _predict(meter, len(right) * max(left, 0))
    elif op in ("**", "**=") and isinstance(left, int) and isinstance(right, int):
        if right < 0:
            raise ContractError("a negative exponent yields floating point")
        if left not in (0, 1, -1) and left.bit_length() * right > limits.max_int_bits:
            raise meter.fail(f"{left.bit_length()}-bit ** {right} is over the integer limit")
    elif op in ("<<", "<<=") and isinstance(left, int) and isinstance(right, int):
        if left and right > limits.max_int_bits:
            raise meter.fail(f"shift by {right} is over the integer limit")
    elif op in ("%", "%=") and isinstance(left, str | bytes):
        raise ContractError("'%' formatting is not allowed; use an f-string")
    elif isinstance(left, _SIZED) and isinstance(right, _SIZED):
        _predict(meter, len(left) + len(right))


def _guarded_range(*args: int) -> range:
    if any(isinstance(a, int) and a.bit_length() > 64 for a in args):
        raise ContractError("range() takes 64-bit integers")
    result = range(*args)
    if len(result) > _meter().limits.max_len:
        raise _meter().fail(f"a range of {len(result)} is over the limit")
    return result


def _guarded_pow(base: int, exp: int, mod: int | None = None) -> int:
    if mod is not None:
        meter = _meter()
        if isinstance(exp, int) and isinstance(mod, int):
            words = abs(mod).bit_length() // 64 + 1
            meter.charge(1 + abs(exp).bit_length() * words * words // 64)
        return _check_size(meter, pow(base, exp, mod))  # type: ignore[no-any-return]
    return Guards.binop("**", base, exp)  # type: ignore[no-any-return]


_MAX_INT_TEXT = 1300
"""Digits an ``int()`` may parse: enough for a 4,096-bit integer, and below every
setting of PYTHONINTMAXSTRDIGITS (640 at least), so no node's environment decides."""


def _guarded_int(*args: Any, **kwargs: Any) -> int:
    if args and isinstance(args[0], str | bytes):
        if len(args[0]) > _MAX_INT_TEXT:
            raise ContractError(f"int() of text longer than {_MAX_INT_TEXT} characters")
        _meter().charge(len(args[0]) * len(args[0]) // 65536)  # conversion is quadratic
    return _check_size(_meter(), int(*args, **kwargs))  # type: ignore[no-any-return]


def _lazy(fn: Callable[..., Any], first_iterable: int) -> Callable[..., Any]:
    """``map``, ``filter``, ``zip``, ``enumerate``: every item they pull is a step."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        wrapped = [Guards.it(a) if i >= first_iterable else a for i, a in enumerate(args)]
        return fn(*wrapped, **kwargs)

    guarded.__name__ = fn.__name__
    return guarded


def _guarded_bytes(*args: Any, **kwargs: Any) -> bytes:
    _check_codec_args(args, kwargs)
    if args and isinstance(args[0], int):
        _predict(_meter(), args[0])
    return _check_size(_meter(), bytes(*args, **kwargs))  # type: ignore[no-any-return]


def _check_codec(codec: Any) -> None:
    if not isinstance(codec, str) or codec.lower().replace("_", "-") not in _CODECS:
        raise ContractError(f"codec {codec!r} is not available; use utf-8, ascii or latin-1")


def _check_codec_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    codec = args[1] if len(args) > 1 else kwargs.get("encoding")
    if codec is not None:
        _check_codec(codec)


def _guarded_str(*args: Any, **kwargs: Any) -> str:
    _check_codec_args(args, kwargs)
    if args:
        Guards.text(args[0])
    return check_no_address(_check_size(_meter(), str(*args, **kwargs)))


def _guarded_repr(value: Any) -> str:
    Guards.text(value)
    return check_no_address(_check_size(_meter(), repr(value)))


def _guarded_sum(items: Iterable[Any], start: int = 0) -> Any:
    if type(start) is not int:
        raise ContractError("sum adds integers only; build lists with comprehensions")
    return _check_size(_meter(), sum(Guards.it(items), start))


def _scanning(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``max``, ``min``, ``any``, ``all``, ``sorted``: charge the scan before it runs
    (a sized argument by its size, any other iterable item by item)."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        meter = _meter()
        per = meter.limits.alloc_per_step
        if len(args) == 1:
            first = args[0]
            if isinstance(first, set | frozenset):
                raise ContractError("sets iterate in hash order and are not allowed; use a dict")
            if isinstance(first, _SIZED):
                factor = 4 if fn is sorted else 1
                meter.charge(1 + _walk_cost(meter, first) * factor // per)
            else:
                args = (Guards.it(first),)
        else:
            meter.charge(1 + sum(_walk_cost(meter, a) for a in args) // per)
        return _check_size(meter, fn(*args, **kwargs))

    guarded.__name__ = fn.__name__
    return guarded


def _copying(fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], set | frozenset):
            raise ContractError("sets iterate in hash order and are not allowed; use a dict")
        meter = _meter()
        if args and not isinstance(args[0], (*_SIZED, int, range)):
            args = (Guards.it(args[0]), *args[1:])  # an iterator: each item is a step
        elif args and isinstance(args[0], _CONTAINERS):
            meter.charge(_walk_cost(meter, args[0]) // meter.limits.alloc_per_step)
        return _check_size(meter, fn(*args, **kwargs))

    guarded.__name__ = fn.__name__
    return guarded


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "**": lambda a, b: a**b,
    "<<": lambda a, b: a << b,
    ">>": lambda a, b: a >> b,
    "|": lambda a, b: a | b,
    "^": lambda a, b: a ^ b,
    "&": lambda a, b: a & b,
}
_IOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "|=": operator.ior,
    "^=": operator.ixor, "&=": operator.iand,
}  # fmt: skip

_OP_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%",
    ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^",
    ast.BitAnd: "&",
}  # fmt: skip

_SAFE_BUILTINS = (
    "abs", "bool", "chr", "divmod",
    "isinstance", "issubclass", "len", "next", "ord", "hex",
    "bin", "oct", "callable",
    "Exception", "ValueError", "KeyError", "IndexError", "TypeError", "ArithmeticError",
    "ZeroDivisionError", "LookupError", "OverflowError", "RuntimeError", "StopIteration",
    "AttributeError", "NotImplementedError", "UnicodeError", "AssertionError",
    "True", "False", "None",
)  # fmt: skip

_GUARDED_BUILTINS = (
    "str", "bytes", "list", "tuple", "dict", "int", "range", "pow", "map", "filter", "zip",
    "enumerate", "repr", "sum", "sorted", "max", "min", "any", "all", "reversed",
)  # fmt: skip
KNOWN_BUILTINS = frozenset(_SAFE_BUILTINS + _GUARDED_BUILTINS)
"""Every global name a contract may use without defining or importing it."""


def _sandbox_builtins(importer: Callable[..., Any]) -> dict[str, Any]:
    table: dict[str, Any] = {name: getattr(builtins, name) for name in _SAFE_BUILTINS}
    table.update(
        str=str,
        bytes=bytes,
        list=list,
        tuple=tuple,
        dict=dict,
        range=_guarded_range,
        pow=_guarded_pow,
        int=int,
        map=_lazy(map, 1),
        filter=_lazy(filter, 1),
        zip=_lazy(zip, 0),
        enumerate=_lazy(enumerate, 0),
        repr=_guarded_repr,
        sum=_guarded_sum,
        sorted=_scanning(sorted),
        max=_scanning(max),
        min=_scanning(min),
        any=_scanning(any),
        all=_scanning(all),
        reversed=_copying(lambda seq: list(reversed(seq))),
        __build_class__=builtins.__build_class__,
        __import__=importer,
    )
    return table


_TYPE_CALLS: dict[str, Callable[..., Any]] = {
    "int": _guarded_int,
    "str": _guarded_str,
    "bytes": _guarded_bytes,
    "list": _copying(list),
    "tuple": _copying(tuple),
    "dict": _copying(dict),
}

_RAW_TYPES: tuple[tuple[type, Callable[..., Any]], ...] = tuple(
    (getattr(builtins, name), guarded) for name, guarded in _TYPE_CALLS.items()
)
"""Builtin types reached as attribute values are handed out in their guarded form."""


# --------------------------------------------------------------------------- rewrite


def _guard(attr: str) -> ast.expr:
    return ast.Attribute(value=ast.Name(id=_GUARD, ctx=ast.Load()), attr=attr, ctx=ast.Load())


def _guard_call(attr: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_guard(attr), args=list(args), keywords=[])


class _Rewriter(ast.NodeTransformer):
    """Insert the guards into a verified tree (see the module docstring)."""

    def __init__(self) -> None:
        self.temps = 0

    def _temp(self) -> str:
        self.temps += 1
        return f"{_GUARD}t{self.temps}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        body = node.body
        doc = body[:1] if body and _is_docstring(body[0]) else []
        rest = body[len(doc) :] or [ast.Pass()]
        node.body = [
            *doc,
            ast.Expr(_guard_call("enter")),
            ast.Try(
                body=rest,
                handlers=[],
                orelse=[],
                finalbody=[ast.Expr(_guard_call("leave"))],
            ),
        ]
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.expr:
        self.generic_visit(node)
        return _guard_call("lam", node)

    def visit_For(self, node: ast.For) -> ast.For:
        size = _statements(node.body)
        self.generic_visit(node)
        node.iter = _guard_call("it", node.iter)
        if size > 1:  # the iterator charges one step per item; the body may cost more
            node.body = [ast.Expr(_guard_call("steps", ast.Constant(size - 1))), *node.body]
        return node

    def visit_While(self, node: ast.While) -> ast.While:
        size = _statements(node.body)
        self.generic_visit(node)
        node.body = [ast.Expr(_guard_call("steps", ast.Constant(size))), *node.body]
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return node
        return _guard_call("unary", ast.Constant(type(node.op).__name__), node.operand)

    def visit_keyword(self, node: ast.keyword) -> ast.keyword:
        self.generic_visit(node)
        if node.arg is None:  # f(**mapping): the call copies it
            node.value = _guard_call("star", node.value)
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.Assign:
        self.generic_visit(node)
        if any(isinstance(p, ast.Starred) for t in node.targets for p in ast.walk(t)):
            node.value = _guard_call("star", node.value)  # first, *rest = big: a copy
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.comprehension:
        self.generic_visit(node)
        node.iter = _guard_call("it", node.iter)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        symbol = _OP_SYMBOLS[type(node.op)]
        return _guard_call("binop", ast.Constant(symbol), node.left, node.right)

    def visit_AugAssign(self, node: ast.AugAssign) -> list[ast.stmt]:
        self.generic_visit(node)
        symbol = _OP_SYMBOLS[type(node.op)] + "="
        target = node.target
        if isinstance(target, ast.Name):
            load = ast.Name(id=target.id, ctx=ast.Load())
            call = _guard_call("iop", ast.Constant(symbol), load, node.value)
            return [ast.Assign(targets=[ast.Name(id=target.id, ctx=ast.Store())], value=call)]
        assert isinstance(target, ast.Subscript), "the verifier allows names and items only"
        obj, key = self._temp(), self._temp()
        item_load = ast.Subscript(
            value=ast.Name(id=obj, ctx=ast.Load()),
            slice=ast.Name(id=key, ctx=ast.Load()),
            ctx=ast.Load(),
        )
        item_store = ast.Subscript(
            value=ast.Name(id=obj, ctx=ast.Load()),
            slice=ast.Name(id=key, ctx=ast.Load()),
            ctx=ast.Store(),
        )
        return [
            ast.Assign(targets=[ast.Name(id=obj, ctx=ast.Store())], value=target.value),
            ast.Assign(targets=[ast.Name(id=key, ctx=ast.Store())], value=target.slice),
            ast.Assign(
                targets=[item_store],
                value=_guard_call("iop", ast.Constant(symbol), item_load, node.value),
            ),
        ]

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.slice, ast.Slice) and isinstance(node.ctx, ast.Load):
            none = ast.Constant(None)
            s = node.slice
            return _guard_call(
                "slice", node.value, s.lower or none, s.upper or none, s.step or none
            )
        if not isinstance(node.slice, ast.Slice | ast.Constant):
            node.slice = _guard_call("key", node.slice)
        return node

    def visit_Starred(self, node: ast.Starred) -> ast.Starred:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.value = _guard_call("star", node.value)
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        func = node.func
        if isinstance(func, ast.Attribute) and not _is_guard(func.value):
            # obj.method(...): the receiver is rewritten, the method is called by name
            receiver = self.visit(func.value)
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return ast.Call(
                func=_guard("call"),
                args=[receiver, ast.Constant(func.attr), *node.args],
                keywords=node.keywords,
            )
        self.generic_visit(node)
        if isinstance(func, ast.Name) and func.id in _GUARDED_TYPES:
            return ast.Call(
                func=_guard("typecall"),
                args=[ast.Constant(func.id), *node.args],
                keywords=node.keywords,
            )
        if _is_guard_call(node.func):
            return node
        return ast.Call(func=_guard("invoke"), args=[node.func, *node.args], keywords=node.keywords)

    def visit_Try(self, node: ast.Try) -> ast.Try:
        self.generic_visit(node)
        if node.finalbody:
            node.finalbody = [ast.Expr(_guard_call("pending")), *node.finalbody]
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and not _is_guard(node.value):
            return _guard_call("attr", node.value, ast.Constant(node.attr))
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        self.generic_visit(node)
        if node.name is None:
            node.name = self._temp()
        rethrow = _guard_call("rethrow", ast.Name(id=node.name, ctx=ast.Load()))
        node.body = [ast.Expr(rethrow), *node.body]
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.FormattedValue:
        # the format spec is a literal (verified): only the value is rewritten
        node.value = _guard_call("text", self.visit(node.value))
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.expr:
        self.generic_visit(node)
        return _guard_call("joined", node)

    def visit_Compare(self, node: ast.Compare) -> ast.Compare:
        self.generic_visit(node)
        node.left = _operand(node.left)
        node.comparators = [_operand(c) for c in node.comparators]
        return node

    def visit_List(self, node: ast.List) -> ast.expr:
        self.generic_visit(node)
        return _guard_call("display", node) if isinstance(node.ctx, ast.Load) else node

    def visit_Tuple(self, node: ast.Tuple) -> ast.expr:
        self.generic_visit(node)
        return _guard_call("display", node) if isinstance(node.ctx, ast.Load) else node

    def visit_DictComp(self, node: ast.DictComp) -> ast.DictComp:
        self.generic_visit(node)
        if not isinstance(node.key, ast.Constant):
            node.key = _guard_call("key", node.key)
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.expr:
        self.generic_visit(node)
        node.keys = [
            k if k is None or isinstance(k, ast.Constant) else _guard_call("key", k)
            for k in node.keys
        ]
        if any(k is None for k in node.keys):  # {**other}: charge the copy
            node.values = [
                _guard_call("star", v) if k is None else v
                for k, v in zip(node.keys, node.values, strict=True)
            ]
        return _guard_call("display", node)


def _operand(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.Constant):
        return node  # a literal's size is bounded by the verifier
    return _guard_call("operand", node)


def _statements(body: list[ast.stmt]) -> int:
    """Statements a loop body runs per iteration at most (nested functions excluded)."""
    count = 0
    for stmt in body:
        for node in _walk_same_function(stmt):
            if isinstance(node, ast.stmt):
                count += 1
    return max(count, 1)


_UNARY: dict[str, Callable[[Any], Any]] = {
    "USub": operator.neg,
    "UAdd": operator.pos,
    "Invert": operator.invert,
}


def _is_guard_call(func: ast.expr) -> bool:
    """A call the rewriter itself produced (``kyodo_guard_.x(...)``)."""
    return isinstance(func, ast.Attribute) and _is_guard(func.value)


def _is_guard(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == _GUARD


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _default_modules() -> dict[str, ModuleType]:
    import kyodo.contract  # the author's SDK sits above this package: import on use

    typing_module = ModuleType("typing", "The part of typing contracts may use.")
    typing_module.Any = Any  # type: ignore[attr-defined]
    return {"kyodo.contract": kyodo.contract, "typing": typing_module}


def compile_contract(
    source: str,
    filename: str,
    modules: dict[str, ModuleType] | None = None,
    limits: SandboxLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Verify, rewrite and run ``source`` as a sandboxed module; return its globals.

    ``modules`` are the importable modules by name (default: ``kyodo.contract`` and
    a ``typing`` holding only ``Any``); names are restricted to the allow-list.
    """
    modules = _default_modules() if modules is None else modules
    tree = verify_source(source, filename, limits)
    tree = ast.fix_missing_locations(_Rewriter().visit(tree))
    code = compile(tree, filename, "exec", dont_inherit=True)

    def importer(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        allowed = _ALLOWED_IMPORTS.get(name)
        if allowed is None or level != 0 or name not in modules:
            raise ImportError(f"import of {name!r} is refused in contracts")
        for item in fromlist or ():
            if item not in allowed:
                raise ImportError(f"{name}.{item} is not available to contracts")
        return modules[name]

    namespace: dict[str, Any] = {
        "__builtins__": _sandbox_builtins(importer),
        "__name__": f"kyodo_contract:{filename}",
        _GUARD: Guards(),
    }
    meter = Meter(limits)
    with metered(meter):
        exec(code, namespace)  # noqa: S102 - verified and rewritten above
    if meter.exhausted is not None:
        raise ResourceLimitExceeded(meter.exhausted)
    return namespace
