"""Verdicts and grading results."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


class Verdict(str, enum.Enum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    RUNTIME_ERROR = "runtime_error"
    OUTPUT_LIMIT = "output_limit"
    SYNTAX_ERROR = "syntax_error"
    SANDBOX_ERROR = "sandbox_error"  # the grader failed, not the program


@dataclass
class TestResult:
    index: int  # position of the test in the problem
    verdict: Verdict
    time: float  # wall seconds
    cpu_time: float  # user + system seconds of the child
    exit_code: int  # negative: killed by that signal (-31 SIGSYS: a forbidden system call)
    stderr: str = ""  # the tail of the program's stderr


@dataclass
class GradeResult:
    verdict: Verdict
    tests: list[TestResult] = field(default_factory=list)  # in the order they ran
    num_tests: int = 0  # tests in the problem; len(tests) is how many ran
    message: str = ""  # syntax error text or sandbox failure
    compile_time: float = 0.0  # wall seconds compiling the solution, under its time limit

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.ACCEPTED

    def to_json(self) -> dict:
        out = {"passed": self.passed, **asdict(self)}
        out["verdict"] = self.verdict.value
        for t in out["tests"]:
            t["verdict"] = t["verdict"].value
        return out
