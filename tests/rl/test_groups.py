"""rl.groups.collect's group filtering and summarize's rates, with scripted rollouts (no server)."""
import asyncio

from rl.groups import Rollout, collect, summarize
from rl.reward import Reward
from rl.rollout.records import Sample


def rollout(problem: int, index: int, verdict: str, version: int = 0) -> Rollout:
    passed = verdict == "accepted"
    sample = Sample("k", index, [1, 2], [3, 4], [-0.5, -0.5], "stop", str(version), "http://s", 0.0, 1, 0)
    return Rollout(problem, sample, Reward(1.0 if passed else -1.0, passed, False, False, verdict), "")


def run(verdicts: dict[int, list[str]], *, dynamic=True, max_rounds=3, groups_needed=2, versions=None):
    """Problems 0, 1, 2, ... in order; problem p's members get verdicts[p] (one per member)."""
    queue = iter(range(100))
    seen = {}

    def draw(k):
        return [next(queue) for _ in range(k)]

    async def sample(p, index):
        i = seen[p] = seen.get(p, -1) + 1
        return rollout(p, index, verdicts[p][i], (versions or {}).get(p, 0))
    return asyncio.run(collect(draw, sample, groups_needed=groups_needed, group_size=2, dynamic=dynamic,
                               max_rounds=max_rounds, min_version=0))


def test_groups_without_signal_are_dropped_and_refilled():
    got = run({0: ["accepted", "accepted"], 1: ["accepted", "wrong_answer"], 2: ["wrong_answer"] * 2,
               3: ["wrong_answer", "accepted"]})
    assert [g[0].problem for g in got.groups] == [1, 3]
    assert (got.stats["groups/dropped_all_pass"], got.stats["groups/dropped_all_fail"]) == (1, 1)
    assert got.stats["groups/rounds"] == 3 and len(got.sampled) == 8  # 2 problems, then 1, then 1


def test_a_group_the_grader_failed_is_dropped_and_counted():
    """A sandbox_error scores -1 though the program earned nothing: kept, it made [1, -1] a signal."""
    got = run({0: ["accepted", "sandbox_error"], 1: ["accepted", "wrong_answer"],
               2: ["wrong_answer", "accepted"]})
    assert [g[0].problem for g in got.groups] == [1, 2]
    assert got.stats["groups/dropped_sandbox_error"] == 1
    assert summarize(got.sampled)["reward/sandbox_error_rate"] == 1 / 6
    got = run({0: ["accepted", "sandbox_error"], 1: ["accepted", "wrong_answer"]}, dynamic=False)
    assert [g[0].problem for g in got.groups] == [1] and got.stats["groups/dropped_unfilled"] == 1


def test_stale_groups_are_dropped():
    got = run({0: ["accepted", "wrong_answer"], 1: ["accepted", "wrong_answer"], 2: ["accepted", "wrong_answer"]},
              versions={0: -1})
    assert [g[0].problem for g in got.groups] == [1, 2] and got.stats["groups/dropped_stale"] == 1
