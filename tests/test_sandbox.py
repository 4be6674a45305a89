"""The contract sandbox: escape attempts refused at deploy time, limits at run time."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from kyodo.contracts import ContractError
from kyodo.contracts._sandbox import (
    Meter,
    SandboxLimits,
    check_source,
    compile_contract,
    metered,
)
from kyodo.contracts.errors import CodeRejectedError, ResourceLimitExceeded

HEADER = "from kyodo.contract import Context, Contract, ContractError, function\n"


def in_function(body: str) -> str:
    """``body`` as the body of a contract function (line 7 is its first line)."""
    return (
        HEADER
        + "\n\nclass C(Contract):\n    @function\n    def f(self, ctx: Context) -> int:\n"
        + textwrap.indent(textwrap.dedent(body), " " * 8)
        + "\n        return 0\n"
    )


# Each attempt: (what it tries, source, line of the refusal, words of the reason).
ESCAPES: list[tuple[str, str, int, str]] = [
    ("import os", "import os\n", 1, "file access"),
    ("from os import system", "from os import system\n", 1, "file access"),
    ("import socket", "import socket\n", 1, "network access"),
    ("import subprocess", "import subprocess\n", 1, "process access"),
    ("import sys", "import sys\n", 1, "process access"),
    ("import time", "import time\n", 1, "clock access"),
    ("from datetime import datetime", "from datetime import datetime\n", 1, "clock access"),
    ("import random", "import random\n", 1, "randomness access"),
    ("from secrets import token_bytes", "from secrets import token_bytes\n", 1, "randomness"),
    ("importlib", "import importlib\n", 1, "introspection"),
    ("relative import", "from . import x\n", 1, "refused"),
    ("typing beyond Any", "from typing import get_type_hints\n", 1, "not available"),
    ("eval", in_function("eval('1')"), 7, "never saw"),
    ("exec", in_function("exec('x = 1')"), 7, "never saw"),
    ("compile", in_function("compile('1', 'f', 'eval')"), 7, "never saw"),
    ("open", in_function("open('/etc/passwd')"), 7, "file access"),
    ("__import__", in_function("__import__('os')"), 7, "reserved"),
    ("dunder class walk", in_function("().__class__.__base__.__subclasses__()"), 7, "'_'"),
    ("globals", in_function("globals()"), 7, "reflection"),
    ("getattr", in_function("getattr(ctx, '_overlay')"), 7, "reflection"),
    ("private attribute", in_function("ctx._overlay"), 7, "'_'"),
    ("frame via generator", in_function("(x for x in []).gi_frame"), 7, "introspection"),
    ("frame via traceback", in_function("ContractError().with_traceback"), 7, "introspection"),
    ("format string attribute", in_function("'{0.x}'.format(ctx)"), 7, "f-string"),
    ("type()", in_function("type(ctx)"), 7, "metaprogramming"),
    ("id()", in_function("id(ctx)"), 7, "differs between processes"),
    ("hash()", in_function("hash('a')"), 7, "hash seed"),
    ("float literal", in_function("x = 1.5"), 7, "floating point"),
    ("true division", in_function("x = 3 / 2"), 7, "floating point"),
    ("float()", in_function("float('1')"), 7, "floating point"),
    ("set literal", in_function("x = {1, 2}"), 7, "PYTHONHASHSEED"),
    ("set comprehension", in_function("x = {i for i in range(3)}"), 7, "hash order"),
    ("set()", in_function("set()"), 7, "PYTHONHASHSEED"),
    ("global statement", in_function("global X"), 7, "shared between transactions"),
    ("module-level mutable", HEADER + "CACHE = {}\n", 2, "immutable"),
    ("class-level mutable", HEADER + "class C(Contract):\n    seen = []\n", 3, "immutable"),
    ("mutable default", HEADER + "def f(x=[]):\n    return x\n", 2, "immutable"),
    ("attribute assignment", in_function("self.count = 1"), 7, "attribute assignment"),
    ("metaclass", HEADER + "class M(Contract, metaclass=X):\n    pass\n", 2, "metaclass"),
    ("generator function", in_function("yield 1"), 7, "generators"),
    ("async", HEADER + "async def f():\n    pass\n", 2, "asynchronous"),
    ("assert", in_function("assert ctx"), 7, "python -O"),
    ("bare except", in_function("try:\n    pass\nexcept:\n    pass"), 9, "budget"),
    ("except BaseException", in_function("try:\n    pass\nexcept BaseException:\n    pass"),
     9, "BaseException"),
    ("with", in_function("with ctx:\n    pass"), 7, "context managers"),
    ("string annotation", HEADER + "def f(x: '__import__'):\n    pass\n", 2, "string annotation"),
    ("str as value", in_function("xs = list(map(str, [ctx]))"), 7, "may only be called"),
    ("huge format width", in_function("x = f'{1:>999999999}'"), 7, "over 1000"),
    ("sandbox guard name", in_function("kyodo_guard_.step()"), 7, "reserved"),
    ("memoryview", in_function("memoryview(b'x')"), 7, "mutable buffers"),
    ("iter sentinel", in_function("iter(int, 1)"), 7, "without metering"),
    ("return in finally", in_function("try:\n    pass\nfinally:\n    return 1"), 10,
     "swallow errors"),
    ("unknown builtin", in_function("x = frobnicate(1)"), 7, "unknown name"),
    ("walrus in isinstance", in_function("isinstance(0, (B := bytes))"), 7, "class name"),
    ("function table", in_function("self.functions()"), 7, "function table"),
    ("slice assignment", in_function("x = [0]\nx[0:0] = x"), 8, "assigning to a slice"),
    ("slice deletion", in_function("x = [0]\ndel x[0:1]"), 8, "deleting a slice"),
    ("try in finally", in_function("try:\n    pass\nfinally:\n    try:\n        pass\n"
     "    except ValueError:\n        pass"), 10, "try inside 'finally'"),
    ("class in a function", in_function("class K(Contract):\n    pass"), 7, "module level"),
    ("dict view mapping", in_function("x = {}.keys().mapping"), 7, "mapping"),
    ("other decorators", HEADER + "def d(f):\n    return f\n\n\n@d\ndef g():\n    return 1\n",
     6, "only @function"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "line", "reason"),
    [pytest.param(src, line, reason, id=name) for name, src, line, reason in ESCAPES],
)
def test_escape_attempt_is_refused_with_line_and_reason(
    source: str, line: int, reason: str
) -> None:
    violations = check_source(source, "escape.py")
    assert violations, "the verifier accepted an escape attempt"
    first = violations[0]
    assert first.filename == "escape.py"
    assert first.line == line, violations
    assert reason in first.reason, violations
    with pytest.raises(CodeRejectedError) as info:
        compile_contract(source, "escape.py")
    assert f"escape.py:{line}:" in str(info.value)


def test_there_are_at_least_25_distinct_escape_attempts() -> None:
    assert len({name for name, *_ in ESCAPES}) >= 25
    assert len({src for _, src, *_ in ESCAPES}) == len(ESCAPES)


GOOD = HEADER + textwrap.dedent(
    '''
    from typing import Any

    LIMIT = 3
    NAMES = ("a", "b")


    class Demo(Contract):
        """Uses what a contract normally uses."""

        @function
        def work(self, ctx: Context, key: str, amount: int) -> dict[str, Any]:
            record = ctx.get(key) or {"total": 0, "log": []}
            record["total"] += amount
            record["log"] = [*record["log"], f"{amount:>4}"][-LIMIT:]
            ctx.put(key, record)
            squares = {i: i * i for i in range(5)}
            text = ",".join(str(v) for v in sorted(squares.values(), key=lambda v: -v))
            return {"total": record["total"], "text": text, "first": NAMES[0]}

        @function
        def spin(self, ctx: Context) -> int:
            n = 0
            while True:
                n += 1


        @function
        def recurse(self, ctx: Context, n: int) -> int:
            return self.recurse(ctx, n + 1)

        @function
        def lambda_recurse(self, ctx: Context) -> int:
            f = lambda g, n: g(g, n + 1)
            return f(f, 0)

        @function
        def grow_text(self, ctx: Context) -> int:
            s = "x"
            for _ in range(40):
                s = s + s
            return len(s)

        @function
        def multiply(self, ctx: Context, n: int) -> int:
            return len("ab" * n)

        @function
        def power(self, ctx: Context, n: int) -> int:
            return (7 ** n) % 10

        @function
        def pad(self, ctx: Context, n: int) -> int:
            return len("a".ljust(n))

        @function
        def view_set(self, ctx: Context) -> list[str]:
            a = {"x": 1, "y": 2}
            return list(a.keys() & {"y": 0}.keys())

        @function
        def text_of_function(self, ctx: Context) -> str:
            return f"{self.work}"

        @function
        def sum_lists(self, ctx: Context) -> int:
            return len(sum([[1]] * 10, []))

        @function
        def list_comp_loop(self, ctx: Context) -> int:
            return len([i for i in range(10**6) for j in range(10**6)])
    '''
)


@pytest.fixture(scope="module")
def demo() -> Any:
    namespace = compile_contract(GOOD, "demo.py")
    return namespace["Demo"]


class FakeCtx:
    """Just enough of a context for the sandbox tests (the executor tests use the real one)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value


def run(cls: Any, fn: str, *args: Any, limits: SandboxLimits | None = None) -> tuple[Any, Meter]:
    meter = Meter(limits or SandboxLimits())
    with metered(meter):
        result = cls.functions()[fn].fn(cls(), FakeCtx(), *args)
    return result, meter


def test_ordinary_contract_code_runs_and_is_metered(demo: Any) -> None:
    result, meter = run(demo, "work", "k", 5)
    assert result == {"total": 5, "text": "16,9,4,1,0", "first": "a"}
    assert 0 < meter.limits.max_steps - meter.steps_left < 200


@pytest.mark.parametrize(
    ("fn", "args", "words"),
    [
        ("spin", (), "steps exceeded"),
        ("recurse", (0,), "nested deeper"),
        ("lambda_recurse", (), "nested deeper"),
        ("grow_text", (), "over the limit"),
        ("multiply", (10**9,), "over the limit"),
        ("power", (10**6,), "integer limit"),
        ("pad", (10**9,), "over the limit"),
        ("list_comp_loop", (), "steps exceeded"),
    ],
)
def test_runaway_code_exceeds_a_limit(
    demo: Any, fn: str, args: tuple[Any, ...], words: str
) -> None:
    with pytest.raises(ResourceLimitExceeded, match=words):
        run(demo, fn, *args)


def test_the_budget_runs_out_at_the_same_step_every_time(demo: Any) -> None:
    spent = set()
    for _ in range(3):
        meter = Meter(SandboxLimits(max_steps=5000))
        with metered(meter), pytest.raises(ResourceLimitExceeded):
            demo.functions()["spin"].fn(demo(), FakeCtx())
        spent.add(meter.steps_left)
    assert len(spent) == 1


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        ("view_set", "sets iterate in hash order"),
        ("text_of_function", "no deterministic text form"),
        ("sum_lists", "integers only"),
    ],
)
def test_nondeterministic_values_are_refused_at_run_time(demo: Any, fn: str, words: str) -> None:
    with pytest.raises(ContractError, match=words):
        run(demo, fn)


def test_sandboxed_code_outside_a_meter_is_a_bug_not_a_free_run(demo: Any) -> None:
    with pytest.raises(AssertionError, match="outside a metered execution"):
        demo.functions()["work"].fn(demo(), FakeCtx(), "k", 1)


def test_imports_at_run_time_are_limited_to_the_allow_list() -> None:
    source = HEADER + textwrap.dedent(
        """
        class C(Contract):
            @function
            def f(self, ctx: Context) -> int:
                from kyodo.contract import sha256_hex
                return len(sha256_hex("x"))
        """
    )
    cls = compile_contract(source, "imp.py")["C"]
    assert run(cls, "f")[0] == 64


def test_syntax_errors_and_oversized_sources_are_violations_not_crashes() -> None:
    assert "syntax error" in check_source("def (:\n", "bad.py")[0].reason
    assert "over" in check_source("x = 1\n" * 100_000, "big.py")[0].reason
    assert "null bytes" in check_source("x = 1\0", "nul.py")[0].reason
    deep = check_source("x = " + "[" * 5000 + "]" * 5000, "deep.py")
    assert deep and ("nested too deeply" in deep[0].reason or "syntax error" in deep[0].reason)


LINEAR = HEADER + textwrap.dedent(
    """
    class Linear(Contract):
        @function
        def scan(self, ctx: Context, kind: str) -> int:
            big = [0] * 900_000
            text = "a" * 900_000
            n = 0
            for _ in range(100_000):
                if kind == "in":
                    n += 1 if 7 in big else 0
                elif kind == "max":
                    n += max(big)
                elif kind == "find":
                    n += text.find("b")
                elif kind == "sort":
                    big.sort()
                elif kind == "fstring":
                    text = f"{text}{text}"
            return n
    """
)


@pytest.mark.parametrize("kind", ["in", "max", "find", "sort", "fstring"])
def test_work_linear_in_a_values_size_is_charged_before_it_runs(kind: str) -> None:
    cls = compile_contract(LINEAR, "linear.py")["Linear"]
    with pytest.raises(ResourceLimitExceeded):
        run(cls, "scan", kind)
