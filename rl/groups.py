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

from rl import reward
from rl.reward import Reward, RewardSettings
from rl.rollout.client import RolloutClient
from rl.rollout.records import Sample, SampleRequest
from sandbox import SandboxPool, Verdict

SANDBOX_ERROR = Verdict.SANDBOX_ERROR.value


@dataclasses.dataclass
class Rollout:
    """One completion and its grade."""
    problem: int                 # index into the problem list
    sample: Sample               # ids, logprobs, finish reason, weight_version, server
    score: Reward                # reward, verdict, per-test results
    text: str                    # the decoded completion
    generated_at: float = 0.0    # perf_counter when the server answered
    graded_at: float = 0.0       # perf_counter when the sandbox answered

    @property
    def reward(self) -> float:
        return self.score.reward

    @property
    def passed(self) -> bool:
        return self.score.passed

    @property
    def truncated(self) -> bool:
        return self.sample.finish_reason == "length"

    @property
    def version(self) -> int:
        """The weight version that produced it (-1 when the server reports none: counts as stale)."""
        v = self.sample.weight_version
        return int(v) if v.isdigit() else -1

    def to_json(self, record) -> dict:
        """One line of rollouts/step_N.jsonl."""
        s = self.sample
        return {"problem": record.id, "reward": self.reward, "verdict": self.score.verdict,
                "finish_reason": s.finish_reason, "length": len(s.output_ids), "weight_version": s.weight_version,
                "text": self.text}


async def sample_and_grade(client: RolloutClient, pool: SandboxPool, tokenizer, problem: int, record,
                           prompt_ids, *, key: str, index: int, sampling: dict, seed: int,
                           settings: RewardSettings) -> Rollout:
    """Draw one completion and grade it at once: the unit that overlaps generation with verification."""
    sample = await client.draw(SampleRequest(key, index, tuple(prompt_ids), sampling, seed))
    generated_at = time.perf_counter()
    text = tokenizer.decode(sample.output_ids, skip_special_tokens=True)
    score = await reward.score(pool, record.problem, text, finish_reason=sample.finish_reason, settings=settings)
    return Rollout(problem, sample, score, text, generated_at, time.perf_counter())


@dataclasses.dataclass
class Collected:
    groups: list[list[Rollout]]  # each of size n, with a reward signal when dynamic sampling is on
    sampled: list[Rollout]       # every rollout drawn, kept or not
    stats: dict


async def collect(draw: Callable[[int], list[int]], sample: Callable[[int, int], Awaitable[Rollout]], *,
                  groups_needed: int, group_size: int, dynamic: bool, max_rounds: int,
                  min_version: int = 0) -> Collected:
    """Fill `groups_needed` groups of `group_size` graded rollouts.

    draw(k) gives the next k problem indices; sample(problem, index) samples and grades one completion
    (index counts every completion drawn in this call, so its seed is unique). Rollouts older than
    min_version are dropped (staleness bound); so are groups with a sandbox_error (a -1 the program did
    not earn) and, when `dynamic`, groups without signal.
    """
    start = time.perf_counter()
    kept: list[list[Rollout]] = []
    sampled: list[Rollout] = []
    drops = collections.Counter()
    counter = 0
    rounds = 0
    generated = graded = start
    while len(kept) < groups_needed and rounds < max(1, max_rounds if dynamic else 1):
        rounds += 1
        problems = draw(groups_needed - len(kept))
        async def member(j: int, p: int, index: int) -> tuple[int, Rollout]:
            return j, await sample(p, index)  # j: the group (a problem may be drawn twice across an epoch)

        tasks = []
        for j, p in enumerate(problems):
            for _ in range(group_size):
                tasks.append(member(j, p, counter))
                counter += 1
        members: list[list[Rollout]] = [[] for _ in problems]
        for next_done in asyncio.as_completed(tasks):
            j, r = await next_done
            generated, graded = max(generated, r.generated_at), max(graded, r.graded_at)
            members[j].append(r)
        for group in members:
            sampled.extend(group)
            group.sort(key=lambda r: r.sample.index)
            if any(r.version < min_version for r in group):
                drops["stale"] += 1
            elif any(r.score.verdict == SANDBOX_ERROR for r in group):  # the grader failed, not the program
                drops["sandbox_error"] += 1
            elif dynamic and len({r.reward for r in group}) == 1:
                drops["all_pass" if group[0].passed else "all_fail"] += 1
            elif len(kept) < groups_needed:
                kept.append(group)
    if len(kept) < groups_needed:
        drops["unfilled"] = groups_needed - len(kept)
    stats = {"groups/kept": len(kept), "groups/rounds": rounds, "groups/sampled": counter // group_size,
             # Grading still running after the last completion arrived: ~0 when pipelining works.
             "time/generate": generated - start, "time/verify_wait": max(graded - generated, 0.0),
             "time/grading_sum": sum(r.score.seconds for r in sampled)}
    stats.update({f"groups/dropped_{k}": v for k, v in drops.items()})
    return Collected(kept, sampled, stats)


def summarize(rollouts: Sequence[Rollout]) -> dict:
    """Per-step rollout metrics: rewards, pass and format-failure rates, lengths, truncation."""
    if not rollouts:
        return {}
    n = len(rollouts)
    lengths = [len(r.sample.output_ids) for r in rollouts]
    return {
        "reward/mean": sum(r.reward for r in rollouts) / n,
        "reward/pass_rate": sum(r.passed for r in rollouts) / n,
        "reward/format_failure_rate": sum(r.score.format_error for r in rollouts) / n,
        "reward/sandbox_error_rate": sum(r.score.verdict == SANDBOX_ERROR for r in rollouts) / n,
        "length/mean": sum(lengths) / n,
        "length/max": max(lengths),
        "length/truncated_frac": sum(r.truncated for r in rollouts) / n,
    }
