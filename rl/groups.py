"""Sample groups of completions and grade each one the moment it arrives.

Every completion is its own request with its own seed, so it reaches the sandbox as soon as it ends,
not when the longest of its batch ends: when the last completion lands, nearly all grading is done
(`verify_wait` measures what is left). DAPO's dynamic sampling drops groups whose rewards are all
equal and draws more problems until the batch is full or the refill rounds run out.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Awaitable, Callable, Sequence


@dataclasses.dataclass
class Rollout:
    """One graded completion."""
    problem: int                 # index into the problem list
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]        # the server's, one per output token
    finish_reason: str           # "stop" | "length"
    weight_version: int
    reward: float
    passed: bool
    format_error: bool
    text: str
    verdict: str
    seed: int
    generated_at: float = 0.0    # perf_counter when the server answered
    graded_at: float = 0.0       # perf_counter when the sandbox answered

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclasses.dataclass
class Collected:
    groups: list[list[Rollout]]  # each of size n, with a reward signal when dynamic sampling is on
    stats: dict


def sample_seed(base: int, step: int, draw: int, index: int) -> int:
    """A distinct, reproducible seed per completion: the same run draws the same samples."""
    return (base * 1_000_003 + step * 10_007 + draw) * 1_009 + index & 0x7FFFFFFF


async def collect(draw: Callable[[int], list[int]], sample: Callable[[int, int], Awaitable[Rollout]], *,
                  groups_needed: int, group_size: int, dynamic: bool, max_rounds: int,
                  min_version: int = 0) -> Collected:
    """Fill `groups_needed` groups of `group_size` graded rollouts.

    draw(k) gives the next k problem indices; sample(problem, index) samples and grades one completion
    (index counts every completion drawn in this call, so its seed is unique). Rollouts older than
    min_version are dropped (staleness bound); so are groups without signal when `dynamic`.
    """
    start = time.perf_counter()
    kept: list[list[Rollout]] = []
    drops = collections.Counter()
    counter = 0
    rounds = 0
    generated = graded = start
    while len(kept) < groups_needed and rounds < max(1, max_rounds if dynamic else 1):
        rounds += 1
        problems = draw(groups_needed - len(kept))
        tasks = {}
        for p in problems:
            for _ in range(group_size):
                tasks[asyncio.ensure_future(sample(p, counter))] = p
                counter += 1
        done_by_problem: dict[int, list[Rollout]] = collections.defaultdict(list)
        for fut in asyncio.as_completed(list(tasks)):
            r = await fut
            generated, graded = max(generated, r.generated_at), max(graded, r.graded_at)
            done_by_problem[r.problem].append(r)
        for p in problems:
            group = sorted(done_by_problem.pop(p), key=lambda r: r.seed)[:group_size]
            if any(r.weight_version < min_version for r in group):
                drops["stale"] += 1
            elif dynamic and len({r.reward for r in group}) == 1:
                drops["all_pass" if group[0].passed else "all_fail"] += 1
            elif len(kept) < groups_needed:
                kept.append(group)
    if len(kept) < groups_needed:
        drops["unfilled"] = groups_needed - len(kept)
    stats = {"groups/kept": len(kept), "groups/rounds": rounds, "groups/sampled": counter // group_size,
             # Grading still running after the last completion arrived: ~0 when pipelining works.
             "time/generate": generated - start, "time/verify_wait": max(graded - generated, 0.0)}
    stats.update({f"groups/dropped_{k}": v for k, v in drops.items()})
    return Collected(kept, stats)


def summarize(groups: Sequence[Sequence[Rollout]]) -> dict:
    """Per-step rollout metrics: rewards, pass and format-failure rates, lengths, truncation, staleness."""
    rollouts = [r for g in groups for r in g]
    if not rollouts:
        return {}
    n = len(rollouts)
    lengths = [len(r.output_ids) for r in rollouts]
    return {
        "reward/mean": sum(r.reward for r in rollouts) / n,
        "reward/pass_rate": sum(r.passed for r in rollouts) / n,
        "reward/format_failure_rate": sum(r.format_error for r in rollouts) / n,
        "length/mean": sum(lengths) / n,
        "length/max": max(lengths),
        "length/truncated_frac": sum(r.truncated for r in rollouts) / n,
    }
