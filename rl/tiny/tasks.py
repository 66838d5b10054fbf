"""Parameterised stdin/stdout problem families that a tiny model can learn, with a held-out split.

A problem is an operation (its wording and its program are templates in one constant k) and a value
of k. Held-out problems are (operation, k) pairs never seen in training, while every operation and
every constant appears in training in some other pair: solving one takes composing what training
taught (which program the wording asks for, copying the constant), not recalling a seen program.

Problems are written in the sandbox's problem JSON (`sandbox.Problem.from_dict` loads them) with
three extra keys: `question` (the text the prompt shows), `solution` (the reference program) and
`id`; `metadata` names the operation and k. `demonstrations` gives the warm start's programs for a
problem: the reference, and the same program opened by each wrong habit (HABITS), problem-independent
first lines that fail on every problem, as an unverified demonstrator would write them.
"""
from __future__ import annotations

import dataclasses
import json
import random
import string
from pathlib import Path
from typing import Callable

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tiny"
TRAIN_FILE, HELDOUT_FILE = ASSETS / "train.jsonl", ASSETS / "heldout.jsonl"
TESTS_PER_PROBLEM = 3
HELDOUT_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation. `wordings` and `code` are str.format templates in k; `make_input(rng, k)` draws a
    test's stdin and `answer(stdin, k)` computes its expected stdout."""
    name: str
    wordings: tuple[str, ...]
    code: str
    make_input: Callable[[random.Random, int], str]
    answer: Callable[[str, int], str]
    ks: tuple[int, ...] = (0,)  # (0,): the operation has no constant


def _int(rng, k):
    return f"{rng.randint(0, 999)}\n"


def _int_around(rng, k):  # half the draws land on a multiple of k, so YES and NO both occur
    m = k * rng.randint(1, 60)
    return f"{m + rng.choice((0, 0, 1, k - 1))}\n"


def _two_ints(rng, k):
    return f"{rng.randint(0, 99)} {rng.randint(0, 99)}\n"


def _word(rng, k):
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(k + 2, k + 8))) + "\n"


def _n_small(rng, k):
    return f"{rng.randint(1, 9)}\n"


def _yes_no(flag: bool) -> str:
    return "YES" if flag else "NO"


INT_PARAM, STR_PARAM = tuple(range(2, 30)), tuple(range(2, 10))

OPS: tuple[Op, ...] = (
    Op("add", ("Read an integer n and print n + {k}.", "Given an integer n, output n plus {k}."),
       "n = int(input())\nprint(n + {k})", _int, lambda s, k: str(int(s) + k), INT_PARAM),
    Op("sub", ("Read an integer n and print n - {k}.", "Given an integer n, output n minus {k}."),
       "n = int(input())\nprint(n - {k})", _int, lambda s, k: str(int(s) - k), INT_PARAM),
    Op("mul", ("Read an integer n and print n * {k}.", "Given an integer n, output n times {k}."),
       "n = int(input())\nprint(n * {k})", _int, lambda s, k: str(int(s) * k), INT_PARAM),
    Op("div", ("Read an integer n and print n // {k}.", "Given an integer n, output n divided by {k}, rounded down."),
       "n = int(input())\nprint(n // {k})", _int, lambda s, k: str(int(s) // k), INT_PARAM),
    Op("mod", ("Read an integer n and print n % {k}.", "Given an integer n, output the remainder of n divided by {k}."),
       "n = int(input())\nprint(n % {k})", _int, lambda s, k: str(int(s) % k), INT_PARAM),
    Op("greater", ("Read an integer n. Print YES if n > {k}, else NO.",
                   "Given an integer n, output YES if n is greater than {k}, otherwise NO."),
       'n = int(input())\nprint("YES" if n > {k} else "NO")', _int_around, lambda s, k: _yes_no(int(s) > k),
       INT_PARAM),
    Op("divisible", ("Read an integer n. Print YES if n % {k} == 0, else NO.",
                     "Given an integer n, output YES if n is divisible by {k}, otherwise NO."),
       'n = int(input())\nprint("YES" if n % {k} == 0 else "NO")', _int_around,
       lambda s, k: _yes_no(int(s) % k == 0), INT_PARAM),
    Op("linear", ("Read two integers a and b. Print a * {k} + b.",
                  "Given two integers a and b, output a times {k} plus b."),
       "a, b = map(int, input().split())\nprint(a * {k} + b)", _two_ints,
       lambda s, k: str(int(s.split()[0]) * k + int(s.split()[1])), INT_PARAM),
    Op("repeat", ("Read a string s and print s repeated {k} times on one line.",
                  "Given a string s, output s written {k} times in a row."),
       "s = input()\nprint(s * {k})", _word, lambda s, k: s.strip() * k, STR_PARAM),
    Op("prefix", ("Read a string s and print its first {k} characters.",
                  "Given a string s, output the first {k} characters of s."),
       "s = input()\nprint(s[:{k}])", _word, lambda s, k: s.strip()[:k], STR_PARAM),
    Op("suffix", ("Read a string s and print its last {k} characters.",
                  "Given a string s, output the last {k} characters of s."),
       "s = input()\nprint(s[-{k}:])", _word, lambda s, k: s.strip()[-k:], STR_PARAM),
    Op("lines", ("Read a string s and print it {k} times, one per line.",
                 "Given a string s, output {k} lines, each equal to s."),
       "s = input()\nfor _ in range({k}):\n    print(s)", _word, lambda s, k: "\n".join([s.strip()] * k), STR_PARAM),
    # Operations without a constant: training only (they have no unseen variant).
    Op("sum2", ("Read two integers a and b and print a + b.", "Given two integers a and b, output their sum."),
       "a, b = map(int, input().split())\nprint(a + b)", _two_ints, lambda s, k: str(sum(map(int, s.split())))),
    Op("max2", ("Read two integers a and b and print the larger one.", "Given two integers a and b, output max(a, b)."),
       "a, b = map(int, input().split())\nprint(max(a, b))", _two_ints, lambda s, k: str(max(map(int, s.split())))),
    Op("reverse", ("Read a string s and print it reversed.", "Given a string s, output s backwards."),
       "s = input()\nprint(s[::-1])", _word, lambda s, k: s.strip()[::-1]),
    Op("upper", ("Read a string s and print it in upper case.", "Given a string s, output s in capital letters."),
       "s = input()\nprint(s.upper())", _word, lambda s, k: s.strip().upper()),
    Op("length", ("Read a string s and print its length.", "Given a string s, output the number of its characters."),
       "s = input()\nprint(len(s))", _word, lambda s, k: str(len(s.strip()))),
    Op("count", ("Read an integer n and print the numbers 1 to n, one per line.",
                 "Given an integer n, output 1, 2, ..., n on separate lines."),
       "n = int(input())\nfor i in range(1, n + 1):\n    print(i)", _n_small,
       lambda s, k: "\n".join(str(i) for i in range(1, int(s) + 1))),
)
OPS_BY_NAME = {op.name: op for op in OPS}


@dataclasses.dataclass(frozen=True)
class Habit:
    """A problem-independent way the warm start's demonstrator opens every program: a first line
    written before the reference program. Only "reference" (no line) passes."""
    name: str
    first_line: str


HABITS: tuple[Habit, ...] = (
    Habit("reference", ""),
    Habit("test count", "t = int(input())\n"),     # a multi-test template: the next input() hits EOF
    Habit("case label", 'print("Case #1:")\n'),    # a Code Jam header: one output line too many
)


def demonstrations(problem: dict) -> list[str]:
    """The warm start's programs for a problem: the reference and each wrong habit's version of it."""
    return [habit.first_line + problem["solution"] for habit in HABITS]


def make_problem(op: Op, k: int, wording: int, seed: int) -> dict:
    """One problem in the sandbox's JSON, with tests that tell k from k + 1 (the likeliest slip)."""
    rng = random.Random(f"{seed}:{op.name}:{k}:{wording}")
    tests = []
    while len(tests) < TESTS_PER_PROBLEM:
        stdin = op.make_input(rng, k)
        tests.append({"input": stdin, "output": op.answer(stdin, k) + "\n", "testtype": "stdin"})
        if len(tests) == TESTS_PER_PROBLEM and op.ks != (0,) and \
                all(op.answer(t["input"], k + 1) + "\n" == t["output"] for t in tests):
            tests.pop(0)  # every test also passes with k + 1: draw another
    return {"id": f"{op.name}_{k}_{wording}" if op.ks != (0,) else f"{op.name}_{wording}",
            "question": op.wordings[wording].format(k=k), "solution": op.code.format(k=k),
            "tests": tests, "metadata": {"family": "tiny", "op": op.name, "k": k}}


def make_splits(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out). Each (op, k) pair gets one wording at random; a random HELDOUT_FRACTION of
    the pairs of every operation with a constant is held out, keeping each k in training somewhere."""
    rng = random.Random(seed)
    train, heldout = [], []
    seen_in_train: set[int] = set()
    candidates = []
    for op in OPS:
        if op.ks == (0,):
            train += [make_problem(op, 0, w, seed) for w in range(len(op.wordings))]
            continue
        ks = list(op.ks)
        rng.shuffle(ks)
        n_held = round(HELDOUT_FRACTION * len(ks))
        candidates += [(op, k) for k in ks[:n_held]]
        for k in ks[n_held:]:
            seen_in_train.add(k)
            train.append(make_problem(op, k, rng.randrange(len(op.wordings)), seed))
    for op, k in candidates:
        problem = make_problem(op, k, rng.randrange(len(op.wordings)), seed)
        (heldout if k in seen_in_train else train).append(problem)
    return train, heldout


def write_jsonl(path: Path, problems: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))


def read_jsonl(path: Path) -> list[dict]:
    """Problems from a .jsonl file, with an error naming the file and line on a bad one."""
    problems = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        missing = {"question", "solution", "tests"} - set(row)
        if missing:
            raise ValueError(f"{path}:{i}: missing {sorted(missing)}")
        problems.append(row)
    return problems
