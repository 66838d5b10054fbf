"""The RL loop end to end: tiny runs over a real embedded server, the real sandbox and the sharded
trainer, for every objective; one-step-off staleness; SIGKILL and resume; pipelined grading."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rl.train
from rl.metrics import read_metrics
from rl.rollout.embedded import EmbeddedServer
from rl.tiny import build
from rl.tiny.tasks import HELDOUT_FILE

ROOT = Path(__file__).resolve().parents[2]
# Keys that measure the machine, not the run: they differ between two identical runs.
CLOCK_KEYS = ("time", "time/", "perf/tokens_per_s")
# The server's logprobs depend on which requests shared its decode batch (a different compiled width
# rounds differently, ~1e-7), as SGLang's do; the sampled tokens, rewards and the update do not.
ENGINE_KEYS = ("loss/mismatch_mean", "loss/mismatch_max")


@pytest.fixture(scope="module")
def tiny_rl(tmp_path_factory):
    """The main job's warm-started tiny model, a few held-out problems, and one server the runs share
    (each run pushes its own weights to it before its first rollout)."""
    root = tmp_path_factory.mktemp("loop")
    model = build(root / "model", seed=0, progress=False)  # solves some problems: mixed rewards
    held_out = root / "heldout.jsonl"
    held_out.write_text("".join(HELDOUT_FILE.read_text().splitlines(keepends=True)[:6]))
    with EmbeddedServer(model, log_path=root / "server.log") as server:
        yield {"root": root, "model": model, "eval": held_out, "url": server.url}


def _run(tiny_rl, name, run_dir, *settings):
    args = [f"model.path={tiny_rl['model']}", f"data.eval={tiny_rl['eval']}", f"rollout.servers={tiny_rl['url']}",
            "batch.prompts_per_step=2", "rollout.group_size=4", "rollout.eval_n=1", "rollout.max_refill_rounds=2",
            "batch.micro_batches=2", "schedule.steps=2", "schedule.eval_every=2", "schedule.checkpoint_every=1",
            *settings]
    return [name, "--run-dir", str(run_dir), *[x for a in args for x in ("--set", a)]]


def _steady(rows):
    return [{k: v for k, v in r.items() if not k.startswith(CLOCK_KEYS + ENGINE_KEYS)} for r in rows]


@pytest.mark.parametrize("name", ["tiny_dapo", "tiny_grpo", "tiny_gspo", "tiny_gspo_plus"])
def test_a_tiny_run_of_every_objective(tiny_rl, tmp_path, name, capsys):
    run_dir = tmp_path / name
    assert rl.train.main(_run(tiny_rl, name, run_dir)) == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in rows[2]
    for r in rows[1:]:
        assert r["groups/sampled"] >= 2 and 0 <= r["reward/pass_rate"] <= 1
        for key in ("time/generate", "time/verify_wait", "time/train", "length/mean", "weight_version"):
            assert key in r, key
        if r["groups/kept"]:  # an update ran: the trainer's metrics, and the weights moved on
            assert r["loss/tokens"] > 0 and r["optim/grad_norm"] > 0
    # Sampling is seeded, so whether a group is kept is fixed: at least one update must have been tested.
    assert any(r["groups/kept"] for r in rows[1:]), "no group kept: the objective's update never ran"
    assert rows[-1]["weight_version"] == sum(1 for r in rows[1:] if r["groups/kept"])
    assert json.loads((run_dir / "config.json").read_text())["objective"]["name"] == name.removeprefix("tiny_")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert len(list((run_dir / "export").glob("step_*"))) == 1  # old exports pruned after the sync
    lines = (run_dir / "rollouts" / "step_000001.jsonl").read_text().splitlines()
    assert len(lines) >= 8 and {"problem", "reward", "verdict", "text"} <= set(json.loads(lines[0]))
    assert "held-out pass@1" in capsys.readouterr().out


def test_cadence_0_means_never_and_only_at_the_end(tiny_rl, tmp_path):
    """schedule.eval_every 0 (held-out evaluations only before RL and at the end) and checkpoint_every 0
    (only at the end) passed validation, then ended the run with ZeroDivisionError. Also: an evaluation
    samples at the response limit its weights last trained with, not a stage that starts after them."""
    run_dir = tmp_path / "run"
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", run_dir, "schedule.steps=3", "schedule.eval_every=0",
                              "schedule.checkpoint_every=0", "rollout.context_stages=2:56,3:48")) == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert ["eval/pass@1" in r for r in rows] == [True, False, False, True]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    limits = [json.loads((run_dir / "eval" / f"step_{s:06d}" / "results.json").read_text())["sampling"]
              ["max_new_tokens"] for s in (0, 3)]
    assert limits == [64, 56]  # step index 2 trained at 56; the stage from 3 on never ran


def test_grading_runs_while_generation_goes_on(tiny_rl, tmp_path):
    """Each completion is graded as it arrives: after the last one lands, little grading is left."""
    run_dir = tmp_path / "pipelined"
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", run_dir, "batch.prompts_per_step=4")) == 0
    for r in read_metrics(run_dir)[1:]:
        assert r["time/grading_sum"] > 0
        assert r["time/verify_wait"] < 0.5 * r["time/grading_sum"], r


def test_one_step_off_never_trains_on_older_than_one_version(tiny_rl, tmp_path):
    run_dir = tmp_path / "async"
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", run_dir, "rollout.max_staleness=1", "schedule.steps=3",
                              "rollout.dynamic_sampling=false")) == 0
    rows = read_metrics(run_dir)[1:]
    assert [r["weight_version"] for r in rows] == [1, 2, 3]  # no dynamic sampling: every step updates
    assert all(r["staleness/max"] <= 1 for r in rows)
    assert rows[-1]["staleness/max"] == 1  # step 3 trained on rollouts of version 1 while at version 2


def test_sigkill_and_resume_equal_an_uninterrupted_run(tiny_rl, tmp_path):
    settings = ("schedule.steps=3", "rollout.dynamic_sampling=false")
    straight = tmp_path / "straight"
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", straight, *settings)) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rl.train", *_run(tiny_rl, "tiny_dapo", killed, *settings)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (killed / "checkpoints" / "2").is_dir():  # orbax renames a finished save into place
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [r["step"] for r in read_metrics(killed)][-1] >= 1
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", killed, *settings)) == 0  # the same command resumes

    assert _steady(read_metrics(killed)) == _steady(read_metrics(straight))
    for a, b in zip(read_metrics(killed), read_metrics(straight)):
        for key in ENGINE_KEYS:
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-5)
    weights = [(d / "export" / "step_000003" / "model.safetensors").read_bytes() for d in (straight, killed)]
    assert weights[0] == weights[1]

    # Re-run when finished: nothing changes. With no checkpoint that reads back it refuses (it used
    # to start over from step 0, cutting metrics.jsonl back to step 0), and the metrics stay.
    done = read_metrics(straight)
    assert rl.train.main(_run(tiny_rl, "tiny_dapo", straight, *settings)) == 0 and read_metrics(straight) == done
    for meta in (straight / "checkpoints").glob("*/extra/metadata"):
        meta.write_text("garbage{{")
    with pytest.warns(UserWarning, match="does not read back"):
        assert rl.train.main(_run(tiny_rl, "tiny_dapo", straight, *settings)) == 2
    assert read_metrics(straight) == done


def test_one_run_directory_one_run(tmp_path):
    from rl.loop import RunDirBusy, _lock_run_dir
    held = _lock_run_dir(tmp_path)
    with pytest.raises(RunDirBusy, match="in use"):
        _lock_run_dir(tmp_path)
    held.close()
    _lock_run_dir(tmp_path).close()
