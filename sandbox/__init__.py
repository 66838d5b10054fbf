"""Verification sandbox: grade untrusted Python solutions against stdin/stdout and call-based
tests with LiveCodeBench's rules, each test in a locked-down process forked from a warm zygote.
See docs/sandbox.md."""
from .extract import extract_code
from .pool import SandboxPool, grade
from .problem import Problem, ProblemError, Test
from .results import GradeResult, TestResult, Verdict

__all__ = ["GradeResult", "Problem", "ProblemError", "SandboxPool", "Test", "TestResult",
           "Verdict", "extract_code", "grade"]
