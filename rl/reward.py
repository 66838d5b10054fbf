"""The reward of one completion: pull the program out of the answer, grade it in the sandbox.

Answer: the last fenced code block (sandbox.extract_code) of the completion, or, for a model that
thinks first, of the text after the last `</think>`. Thinking that never closed means the
completion ran out of tokens before answering: truncated, not a format failure. A missing code
block otherwise is a format failure. Tests run hardest (longest input) first and stop at the first
failure (the sandbox's run order), except for the "partial" shape, which needs them all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from sandbox import Problem, SandboxPool, TestResult, Verdict, extract_code

THINK_END = "</think>"
SHAPES = ("pm1", "binary", "partial")
FORMAT_ERROR = "format_error"  # no code block in the answer
UNANSWERED = "unanswered"      # thinking never closed: cut off before any answer


@dataclass(frozen=True)
class RewardSettings:
    shape: str = "pm1"          # "pm1": +1 / -1; "binary": 1 / 0 (rllm); "partial": 2 * passed/total - 1
    time_limit: float = 15.0    # seconds per test
    memory_mb: int = 4096
    thinking: bool = False      # the answer follows the last </think>

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"sandbox.reward: expected one of {SHAPES}, got {self.shape!r}")

    @classmethod
    def from_experiment(cls, exp) -> "RewardSettings":
        return cls(exp.sandbox.reward, exp.sandbox.time_limit, exp.sandbox.memory_mb, exp.data.thinking)

    @property
    def low(self) -> float:
        """The reward of a wrong, missing or unanswered program."""
        return 0.0 if self.shape == "binary" else -1.0


@dataclass
class Reward:
    reward: float
    passed: bool               # every test passed
    format_error: bool         # no code block in a finished answer
    truncated: bool            # finish_reason "length"
    verdict: str               # a sandbox Verdict value, FORMAT_ERROR or UNANSWERED
    tests_passed: int = 0
    num_tests: int = 0
    tests: list[TestResult] = field(default_factory=list)  # in the order they ran
    seconds: float = 0.0       # grading wall time
    code: str | None = None

    def to_json(self) -> dict:
        return {"reward": self.reward, "passed": self.passed, "format_error": self.format_error,
                "truncated": self.truncated, "verdict": self.verdict,
                "tests_passed": self.tests_passed, "num_tests": self.num_tests,
                "seconds": round(self.seconds, 4),
                "tests": [{"index": t.index, "verdict": t.verdict.value, "time": t.time}
                          for t in self.tests]}


def finish_type(finish_reason) -> str:
    """SGLang's finish_reason is {"type": ..., ...}; a bare string is taken as the type."""
    return finish_reason.get("type", "") if isinstance(finish_reason, dict) else str(finish_reason or "")


def answer_code(completion: str, settings: RewardSettings) -> tuple[str | None, bool]:
    """(code or None, whether an answer section exists). With thinking, only what follows the
    last </think> is the answer; without a </think> there is no answer at all."""
    if settings.thinking:
        cut = completion.rfind(THINK_END)
        if cut < 0:
            return None, False
        completion = completion[cut + len(THINK_END):]
    return extract_code(completion), True


def _answer_or_reward(problem: Problem, completion: str, finish_reason, settings: RewardSettings
             ) -> tuple[Reward | None, str | None, bool]:
    """(the Reward when there is nothing to grade, else None; the code; truncated)."""
    truncated = finish_type(finish_reason) == "length"
    code, answered = answer_code(completion, settings)
    if code is not None:
        return None, code, truncated
    # Out of tokens before the answer is the overlong filter's business, not a format failure.
    return Reward(settings.low, False, not truncated, truncated,
                  FORMAT_ERROR if answered else UNANSWERED, num_tests=len(problem.tests)), None, truncated


def _options(settings: RewardSettings) -> dict:
    return {"time_limit": settings.time_limit, "memory_mb": settings.memory_mb,
            "all_tests": settings.shape == "partial"}


def _graded(settings: RewardSettings, result, code: str, truncated: bool, seconds: float) -> Reward:
    passed_tests = sum(t.verdict is Verdict.ACCEPTED for t in result.tests)
    if settings.shape == "partial":
        value = 2.0 * passed_tests / max(result.num_tests, 1) - 1.0
    else:
        value = 1.0 if result.passed else settings.low
    return Reward(value, result.passed, False, truncated, result.verdict.value, passed_tests,
                  result.num_tests, list(result.tests), seconds, code)


async def score(pool: SandboxPool, problem: Problem, completion: str, *, finish_reason,
                settings: RewardSettings) -> Reward:
    """Grade one completion on the pool's threads (await it the moment the completion arrives).
    finish_reason: SGLang's {"type": ...} or the type itself ("stop", "length")."""
    reward, code, truncated = _answer_or_reward(problem, completion, finish_reason, settings)
    if reward is not None:
        return reward
    start = time.perf_counter()
    result = await pool.grade_async(problem, code, **_options(settings))
    return _graded(settings, result, code, truncated, time.perf_counter() - start)


def score_sync(pool: SandboxPool, problem: Problem, completion: str, *, finish_reason,
               settings: RewardSettings) -> Reward:
    """score() for callers without an event loop."""
    reward, code, truncated = _answer_or_reward(problem, completion, finish_reason, settings)
    if reward is not None:
        return reward
    start = time.perf_counter()
    result = pool.grade(problem, code, **_options(settings))
    return _graded(settings, result, code, truncated, time.perf_counter() - start)
