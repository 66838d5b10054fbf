"""Rewards graded by a real SandboxPool: answer extraction (thinking, truncation, format failures),
the reward shapes, the experiment's limits, and hardest-first early stop."""
import asyncio
from pathlib import Path

import pytest

from rl.data import load_problems
from rl.experiment import DataSection, Experiment, SandboxSection
from rl.reward import Reward, RewardSettings, score, score_sync
from sandbox import Problem, SandboxPool

# Inputs of three lengths; "echo" echoes its line, so the longest input is test 1.
ECHO = Problem.from_dict({"tests": [{"input": "ab\n", "output": "ab\n"},
                                    {"input": "abcdefgh\n", "output": "abcdefgh\n"},
                                    {"input": "abcd\n", "output": "abcd\n"}]})
RIGHT = "print(input())"
WRONG_ON_LONGEST = "s = input()\nprint(s if len(s) < 8 else s[::-1])"
WRONG_ON_SHORTEST = "s = input()\nprint(s if len(s) > 2 else 'x')"


def fenced(code, lang="python"):
    return f"Here is my solution.\n```{lang}\n{code}\n```\n"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as p:
        yield p


def run(pool, completion, finish_reason="stop", problem=ECHO, **settings) -> Reward:
    return asyncio.run(score(pool, problem, completion, finish_reason=finish_reason,
                             settings=RewardSettings(**settings)))


def test_correct_program_gets_plus_one(pool):
    r = run(pool, "Let me think.\n```python\nprint('draft')\n```\nFinal:\n" + fenced(RIGHT))
    assert (r.reward, r.passed, r.format_error, r.truncated, r.verdict) == (1.0, True, False, False, "accepted")
    assert (r.tests_passed, r.num_tests, len(r.tests)) == (3, 3, 3)
    assert r.code == RIGHT + "\n" and r.seconds > 0


def test_wrong_program_gets_minus_one(pool):
    r = run(pool, fenced("print('nope')"))
    assert (r.reward, r.passed, r.format_error, r.verdict) == (-1.0, False, False, "wrong_answer")
    r = run(pool, fenced("raise SystemError"))
    assert (r.reward, r.verdict) == (-1.0, "runtime_error")


def test_missing_code_block_is_a_format_failure(pool):
    r = run(pool, "print(input())  # but not fenced")
    assert (r.reward, r.passed, r.format_error, r.truncated, r.verdict) == (-1.0, False, True, False, "format_error")
    assert r.tests == [] and r.num_tests == 3 and r.code is None
    assert run(pool, fenced(RIGHT, lang="cpp")).format_error  # a C++ block is no Python answer


def test_thinking_closed_then_code_is_graded(pool):
    thought = "<think>\nMaybe:\n" + fenced("print('draft')") + "</think>\n\n"
    r = run(pool, thought + fenced(RIGHT), thinking=True)
    assert (r.reward, r.verdict) == (1.0, "accepted")
    # only the answer after the last </think> counts: code inside the thinking is not graded
    r = run(pool, "<think>\n" + fenced(RIGHT) + "</think>\nDone.", thinking=True)
    assert (r.reward, r.format_error, r.verdict) == (-1.0, True, "format_error")
    # without the setting, the whole completion is the answer
    assert run(pool, "<think>\n" + fenced(RIGHT) + "</think>\nDone.").passed


def test_thinking_never_closed_is_truncated_not_a_format_failure(pool):
    text = "<think>\nLet me try\n" + fenced(RIGHT) + "and then"
    for finish in ("length", {"type": "length", "length": 4096}):
        r = run(pool, text, finish_reason=finish, thinking=True)
        assert (r.reward, r.passed, r.format_error, r.truncated, r.verdict) == \
            (-1.0, False, False, True, "unanswered")
    # stopping of its own accord without ever answering is a format failure
    r = run(pool, text, finish_reason={"type": "stop", "matched": 151645}, thinking=True)
    assert (r.format_error, r.truncated, r.verdict) == (True, False, "unanswered")
    # cut off without a code block (no thinking) is truncation too
    r = run(pool, "Let me write the progr", finish_reason="length")
    assert (r.reward, r.format_error, r.truncated) == (-1.0, False, True)


def test_truncated_completion_with_a_complete_block_is_still_graded(pool):
    r = run(pool, fenced(RIGHT) + "Some more words that were cut", finish_reason="length")
    assert (r.reward, r.passed, r.truncated, r.format_error) == (1.0, True, True, False)


def test_reward_shapes(pool):
    expected = {  # shape -> (right, wrong on 1 of 3, no code block)
        "pm1": (1.0, -1.0, -1.0), "binary": (1.0, 0.0, 0.0), "partial": (1.0, 2 * 2 / 3 - 1, -1.0)}
    for shape, (right, one_wrong, missing) in expected.items():
        got = (run(pool, fenced(RIGHT), shape=shape).reward,
               run(pool, fenced(WRONG_ON_LONGEST), shape=shape).reward,
               run(pool, "no code", shape=shape).reward)
        assert got == pytest.approx((right, one_wrong, missing)), shape
    r = run(pool, fenced(WRONG_ON_LONGEST), shape="partial")  # partial credit runs every test
    assert (len(r.tests), r.tests_passed, r.passed) == (3, 2, False)
    with pytest.raises(ValueError, match="sandbox.reward"):
        RewardSettings(shape="fraction")


def test_tests_run_hardest_first_and_stop_early(pool):
    r = run(pool, fenced(WRONG_ON_LONGEST))
    assert [t.index for t in r.tests] == [1]  # the longest input ran first and stopped the rest
    r = run(pool, fenced(WRONG_ON_SHORTEST))
    assert [(t.index, t.verdict.value) for t in r.tests] == \
        [(1, "accepted"), (2, "accepted"), (0, "wrong_answer")]


def test_the_experiments_limits_apply(pool):
    slow = fenced("import time\ntime.sleep(3)\nprint(input())")
    r = run(pool, slow, time_limit=0.5)
    assert (r.reward, r.verdict) == (-1.0, "time_limit") and r.seconds < 2.5
    hog = fenced("x = bytearray(400 << 20)\nprint(input())")
    assert run(pool, hog, memory_mb=256).verdict == "memory_limit"
    settings = RewardSettings.from_experiment(Experiment(
        data=DataSection(thinking=True), sandbox=SandboxSection(time_limit=2.0, memory_mb=512, reward="binary")))
    assert settings == RewardSettings("binary", 2.0, 512, True)


def test_sync_and_async_agree(pool):
    settings = RewardSettings(shape="partial")
    for text in (fenced(RIGHT), fenced(WRONG_ON_SHORTEST), "no code"):
        a = run(pool, text, shape="partial")
        s = score_sync(pool, ECHO, text, finish_reason="stop", settings=settings)
        assert (a.reward, a.verdict, a.tests_passed) == (s.reward, s.verdict, s.tests_passed)
    assert score_sync(pool, ECHO, fenced(RIGHT), finish_reason="stop",
                      settings=settings).to_json()["tests"][0]["verdict"] == "accepted"


def test_call_based_problems_from_published_rows(pool):
    recs, _ = load_problems(Path(__file__).parent / "data" / "lcb_code_generation.jsonl")
    leet = recs[1].problem
    code = "class Solution:\n    def maxValue(self, nums):\n        return max(nums)"
    assert run(pool, fenced(code), problem=leet).passed
    assert run(pool, fenced(code.replace("max(", "min(")), problem=leet).verdict == "wrong_answer"
    deep, _ = load_problems(Path(__file__).parent / "data" / "deepcoder_preview.jsonl")
    code = ("class Solution:\n    def numberOfEmployeesWhoMetTarget(self, hours, target):\n"
            "        return sum(h >= target for h in hours)")
    assert run(pool, fenced(code), problem=deep[4].problem).passed
    assert run(pool, fenced("def double(x):\n    return 2 * x"), problem=deep[3].problem).passed
