"""Nothing of one sandbox run reaches another: attacks by a hostile tenant on the runs that
come after its own in the same warm worker process (docs/sandbox.md, "One run, one tenant").

Every attack here worked on the warm pool as it was before: objects a run leaves for the
garbage collector (a suspended generator in a reference cycle, whose `finally` or `with`
exit runs when it is collected, and which can re-arm itself) ran during later runs, where
they printed into, read, seeded, refused in or burned the CPU of the run in progress; a
refusal did not retire the worker; and one process ran code of every tenant. The victims
allocate enough containers that the collector runs during their own run, as any real run
does. No database needed."""

from __future__ import annotations

import random
import threading

import pytest

from stage0.errors import LoglineError
from stage0.sandbox import worker as sandbox_worker
from stage0.sandbox.pool import Limits, SandboxPool

#: CPU time and wall time are what these tests measure: under xdist they run one at a time, on
#: one worker, rather than against each other (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("sandbox")
LIMITS = Limits(wall_ms=5000, cpu_ms=1000, memory_mb=128)

#: Victim code: allocates 30,000 lists (dozens of collections of the youngest generations,
#: several of the middle one) before doing its actual work.
CHURN = "    junk = [[i] for i in range(30000)]\n"


def victim(body: str, header: str = "") -> str:
    lines = "".join("    " + line + "\n" for line in body.strip("\n").splitlines())
    return f"{header}\ndef main(x):\n{CHURN}{lines}"


def leftover(finally_body: str, header: str = "", rearm: bool = False) -> str:
    """An attacker's run that leaves a generator suspended in try/finally inside a
    self-referencing cycle; its `finally` runs whenever the collector frees the cycle. With
    `rearm`, the `finally` also builds a new such cycle, so it fires again and again. The
    cycle is built with builtins only (`getattr`, `next`), so that re-arming works even
    where the run's globals are gone."""
    body = "".join("            " + line + "\n" for line in finally_body.strip("\n").splitlines())
    again = "            again(again, loot)\n" if rearm else ""
    return (f"{header}\n"
            "def arm(again, loot):\n"
            "    def g(box):\n"
            "        try:\n"
            "            yield 1\n"
            "        finally:\n"
            f"{body}{again}"
            "    box = []\n"
            "    it = g(box)\n"
            "    getattr(box, 'append')(it)\n"
            "    next(it)\n"
            "def main(x):\n"
            "    arm(arm, [])\n"
            "    return 'armed'\n")


def serving_pid(pool: SandboxPool) -> int:
    """The pid of the one worker of a one-worker pool that will serve the next run."""
    assert pool.wait_full(30)
    [info] = pool.worker_info()
    return info["pid"]


@pytest.fixture
def one():
    """A pool of one worker, so every run goes to the same process unless it is retired."""
    with SandboxPool(1, LIMITS) as p:
        yield p


# ---------------------------------------------------------------- leftovers never run later

@pytest.mark.parametrize("rearm", [False, True], ids=["once", "re-arming"])
def test_a_leftover_generator_never_prints_into_a_later_run(one, rearm):
    attack = one.run(leftover("print('LEFTOVER')", rearm=rearm), 1)
    assert attack.ok, attack.error
    for _ in range(3):
        run = one.run(victim("print('victim')\nreturn len(junk)"), 1)
        assert run.ok and run.output == 30000
        assert run.stdout == "victim\n", run.stdout
    # Its finally ran inside its own run (the sweep after the entry returned).
    assert "LEFTOVER" in attack.stdout


@pytest.mark.parametrize("cycle", [
    # the generator's own frame holds the list that holds it
    "box = []\nit = g(box)\nbox.append(it)\nnext(it)",
    # a dict that holds itself and the generator (which knows nothing of it)
    "it = g(None)\nnext(it)\nd = {'gen': it}\nd['self'] = d",
    # a two-list cycle, the generator at the end of a chain hanging off it
    "it = g(None)\nnext(it)\na = [[[it]]]\nb = [a]\na.append(b)",
    # generators suspended in a cycle of generators
    "it = g(None)\nnext(it)\nx = [it]\ny = iter([x])\nx.append(y)",
], ids=["self-referencing", "dict-cycle", "list-cycle", "iterator-cycle"])
def test_cycles_holding_a_suspended_generator_are_finalised_in_their_own_run(one, cycle):
    code = ("def g(box):\n    try:\n        yield 1\n    finally:\n        print('FIN')\n"
            "def main(x):\n" + "".join("    " + line + "\n" for line in cycle.splitlines())
            + "    return 1\n")
    attack = one.run(code, 1)
    run = one.run(victim("print('v')\nreturn 1"), 1)
    assert run.ok and run.stdout == "v\n", run.stdout
    assert attack.ok and attack.stdout == "FIN\n", attack


def test_only_a_run_whose_code_survives_the_sweep_retires_its_worker(one):
    """Recursive closures, self-referencing data, abandoned generators and kept exceptions
    are ordinary code: their cycles are collected and the worker stays. A leftover that
    re-arms itself while it is collected survives: its process is replaced."""
    ordinary = ("def main(x):\n"
                "    def fact(n):\n        return 1 if n < 2 else n * fact(n - 1)\n"
                "    d = {}\n    d['self'] = d\n"
                "    gen = (i for i in range(10))\n    next(gen)\n"
                "    try:\n        {}['k']\n    except KeyError as e:\n        kept = [e]\n"
                "    return fact(5)\n")
    pid = serving_pid(one)
    assert one.run(ordinary, 1).output == 120
    assert one.run(ordinary, 1).output == 120
    assert serving_pid(one) == pid
    assert one.run(leftover("getattr(loot, 'append')(1)", rearm=True), 1).ok
    assert serving_pid(one) != pid  # the process holding the re-armed cycle is gone
    assert one.run(victim("return 1"), 1).ok


def test_a_leftover_cannot_read_the_output_of_a_later_run(one):
    """The audit's attack: a re-arming leftover takes `printed` (all the text printed so far
    in the run in progress) and prints its loot in the attacker's next run."""
    attack = leftover("getattr(loot, 'append')(printed)\nprint('LOOT:' + '|'.join(loot))",
                      rearm=True)
    assert one.run(attack, 1).ok
    secret = one.run("def main(x):\n    print('the secret is 4711')\n" + CHURN
                     + "    return 1\n", 1)
    again = one.run(victim("return 1"), 1)  # the attacker's next run
    assert again.ok and "4711" not in again.stdout
    assert secret.ok and secret.stdout == "the secret is 4711\n"


def test_a_leftover_cannot_seed_the_random_generator_of_a_later_run(one):
    attack = leftover("import random\ngetattr(random, 'seed')(1234)", rearm=True)
    assert one.run(attack, 1).ok
    seeded = random.Random(1234).random()
    for _ in range(3):
        run = one.run(victim("return random.random()", "import random"), 1)
        assert run.ok and run.output != seeded


def test_a_generator_suspended_in_a_decimal_context_cannot_change_a_later_run():
    """A generator suspended inside `with decimal.localcontext()`: when it is closed, the
    `with` restores the context that was current when it entered, here a 3-digit one."""
    code = ("import decimal\n"
            "def hold():\n    with decimal.localcontext(prec=28):\n        yield 1\n"
            "def main(x):\n"
            "    with decimal.localcontext(prec=3):\n"
            "        kept = hold()\n"
            "        next(kept)\n"
            "    box = [kept]\n"
            "    box.append(box)\n"
            "    return 1\n")
    plain = victim("return str(decimal.Decimal(1) / 3)", "import decimal")
    with SandboxPool(1, LIMITS) as one:
        assert one.run(code, 1).ok
        for _ in range(3):
            assert one.run(plain, 1).output == "0.3333333333333333333333333333"


def test_a_leftover_refusal_is_charged_to_its_own_run(one):
    attack = one.run(leftover("try:\n    getattr(1, '__class__')\nexcept Exception:\n"
                              "    pass"), 1)
    for _ in range(3):
        run = one.run(victim("return 1"), 1)
        assert run.ok, run.error
    assert attack.code == "SANDBOX_FORBIDDEN" and "__class__" in attack.error["message"]


def test_a_leftover_burning_cpu_is_charged_to_its_own_run(one):
    attack = one.run(leftover("while True:\n    pass"), 1)
    run = one.run(victim("return 1"), 1)
    assert run.ok, run.error
    assert attack.code == "SANDBOX_CPU_LIMIT"


def test_a_callback_left_in_the_input_does_not_outlive_the_run(one):
    code = ("def g():\n    try:\n        yield 1\n    finally:\n        print('FIN')\n"
            "def main(x):\n    it = g()\n    next(it)\n    x.append(it)\n    x.append(x)\n"
            "    return 1\n")
    attack = one.run(code, [])
    run = one.run(victim("print('v')\nreturn 1"), 1)
    assert run.stdout == "v\n"
    assert attack.ok and attack.stdout == "FIN\n"


# ---------------------------------------------------------------- failures retire the worker

#: (code, retired): code that executed and did not end ok retires its worker; a compile
#: refusal (nothing of it ran) keeps it.
ENDINGS = [
    (victim("try:\n    getattr(1, '__class__')\nexcept Exception:\n    pass\nreturn 1"), True),
    (victim("return getattr(1, '__class__')"), True),
    (victim("import math\nmath.pi = 3\nreturn 1"), True),
    (victim("raise ValueError('x')"), True),
    (victim("return {1, 2}"), True),  # not JSON: the code ran all the same
    (victim("return eval"), True),
    ("x = 1\n", True),  # no entry point: the module body ran
    ("import os\ndef main(x):\n    return 1\n", False),
    ("def main(x):\n    return x.__class__\n", False),
    ("def main(x:\n", False),
]


def test_a_run_that_did_not_end_ok_retires_its_worker_unless_nothing_ran(one):
    for code, retired in ENDINGS:
        pid = serving_pid(one)
        result = one.run(code, 1)
        assert not result.ok
        assert (serving_pid(one) != pid) is retired, (code, result.error)
        assert one.run(victim("return 1"), 1).ok


# ---------------------------------------------------------------- one tenant per process

def test_two_tenants_never_share_a_process(one):
    a1 = one.run(victim("return 'a'"), 1, tenant="tenant-a")
    a2 = one.run(victim("return 'a'"), 1, tenant="tenant-a")
    b = one.run(victim("return 'b'"), 1, tenant="tenant-b")
    a3 = one.run(victim("return 'a'"), 1, tenant="tenant-a")
    anonymous = one.run(victim("return 'none'"), 1)
    assert a1.worker_pid == a2.worker_pid  # a tenant keeps its warm worker
    pids = [a1.worker_pid, b.worker_pid, a3.worker_pid, anonymous.worker_pid]
    assert len(set(pids)) == 4, pids
    assert [w["tenant"] for w in one.worker_info()] == [None]
    assert one.worker_info()[0]["bound"]


def test_a_leftover_of_one_tenant_never_meets_another_tenant(one):
    """Even code that survived every other wall would find only its own tenant's runs."""
    attack = leftover("getattr(loot, 'append')(printed)\nprint('|'.join(loot))", rearm=True)
    first = one.run(attack, 1, tenant="mallory")
    secret = one.run(victim("print('alice-secret')\nreturn 1"), 1, tenant="alice")
    assert secret.worker_pid != first.worker_pid
    assert secret.stdout == "alice-secret\n"
    assert "alice-secret" not in one.run(victim("return 1"), 1, tenant="mallory").stdout


def test_concurrent_tenants_on_two_workers_never_share_a_process():
    seen: dict[int, set[str]] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def caller(tenant: str) -> None:
        for _ in range(6):
            result = pool.run(victim("return 1"), 1, tenant=tenant)
            if not result.ok:
                errors.append(str(result.error))
            with lock:
                seen.setdefault(result.worker_pid, set()).add(tenant)

    with SandboxPool(2, LIMITS) as pool:
        threads = [threading.Thread(target=caller, args=(t,)) for t in ("a", "b", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert all(len(tenants) == 1 for tenants in seen.values()), seen


def test_tenant_must_be_a_name(one):
    for bad in ("", 5, b"acme", ["a"]):
        with pytest.raises(LoglineError) as err:
            one.run("def main(x):\n    return 1\n", 1, tenant=bad)
        assert err.value.code == "SANDBOX_INVALID_REQUEST" and err.value.where == "tenant"


# ---------------------------------------------------------------- standard library after the walls

def test_datetime_formatting_works_after_the_walls(one):
    code = ("import datetime\n"
            "def main(x):\n"
            "    d = datetime.datetime(2024, 1, 2, 3, 4, 5)\n"
            "    return [d.strftime('%Y/%m/%d %H:%M %A %B %j'), f'{d:%d.%m.%Y}',\n"
            "            datetime.date(2024, 2, 29).strftime('%a %b'), d.ctime(),\n"
            "            list(d.timetuple())[:6], datetime.time(7, 8).strftime('%H-%M'),\n"
            "            datetime.date.today().year > 2000]\n")
    result = one.run(code, 1)
    assert result.ok, result.error
    assert result.output == ["2024/01/02 03:04 Tuesday January 002", "02.01.2024", "Thu Feb",
                             "Tue Jan  2 03:04:05 2024", [2024, 1, 2, 3, 4, 5], "07-08", True]
    # The modules those imports load stay out of reach of user code.
    for code in ("import time\ndef main(x):\n    return 1\n",
                 "def main(x):\n    import warnings\n    return 1\n"):
        assert one.run(code, 1).code == "SANDBOX_FORBIDDEN"


#: A text each codec can encode (codec: sample).
CODECS = {
    **dict.fromkeys(["utf-8", "utf-16", "utf-32-le", "utf-7", "utf-8-sig", "latin-1",
                     "iso8859-15", "cp437", "cp850", "cp1252", "mac-roman", "punycode",
                     "unicode_escape", "raw_unicode_escape"], "Aé"),
    "ascii": "abc", "idna": "bücher.example", "koi8-r": "Aж", "cp1251": "Aж",
    "shift_jis": "Aあ", "euc-jp": "Aあ", "iso2022_jp": "Aあ", "gb18030": "A中", "gbk": "A中",
    "big5": "A中", "euc-kr": "A한", "cp949": "A한",
}


def test_every_common_codec_works_after_the_walls(one):
    code = ("def main(samples):\n"
            "    return {c: t.encode(c).decode(c) == t for c, t in samples.items()}\n")
    result = one.run(code, CODECS)
    assert result.ok, result.error
    assert result.output == dict.fromkeys(CODECS, True)
    unknown = one.run("def main(x):\n    return 'a'.encode('no-such-codec')\n", 1)
    assert unknown.error["message"] == "line 2: LookupError: unknown encoding: no-such-codec"


HOST_PATHS = [
    "/usr/lib/python3.11/encodings/cp437.py",
    "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/RestrictedPython/Guards.py",
    "/work/wt/sandbox/stage0/sandbox/worker.py",
]
ORDINARY = ["2024/01/02", "a/b", "x / y", "unsupported operand type(s) for /: 'int' and 'str'",
            "see https://example.com/a/b", "/", "/single"]


@pytest.mark.parametrize("path", HOST_PATHS)
def test_error_messages_never_name_host_paths(one, path):
    result = one.run(f"def main(x):\n    raise OSError(24, 'Too many open files', {path!r})\n", 1)
    assert result.code == "SANDBOX_RUNTIME_ERROR"
    assert result.error["message"] == \
        "line 2: OSError: [Errno 24] Too many open files: '<path>'"
    error = sandbox_worker._error("X", f"No module named x (from {path}, line 3)")
    assert error["message"] == "No module named x (from <path>, line 3)"
    for text in ORDINARY:  # what only looks a bit like a path is left alone
        assert sandbox_worker._error("X", text)["message"] == text
