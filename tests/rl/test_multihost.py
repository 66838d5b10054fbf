"""Many processes, one run (rl.distributed): 2 processes x 4 CPU devices, joined by jax.distributed over
gloo on 127.0.0.1, give what 1 process x 8 devices gives: the sharded update, the export, and an orbax
checkpoint saved and restored collectively; and `python -m rl.train` runs with process 0 alone sampling.

This file is also the worker the tests launch: `python tests/rl/test_multihost.py OUT` under the
environment of one process (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import models
import rl.train
from rl import distributed
from rl.checkpoint import Checkpointer
from trainer_setup import experiment, initial_params, samples, trainer as make_trainer

ROOT = Path(__file__).resolve().parents[2]
EXTRA = {"data": {"epoch": 0, "offset": 16, "seed": 0}, "weight_version": 2}


def _update_and_checkpoint(out: Path) -> None:
    """Two updates, an export and a checkpoint saved then restored, on the (2, 2, 2) mesh of all the
    processes' devices, through the loop's Lockstep. Each process writes out/process_I.npz."""
    trainer = make_trainer(experiment(micro_batches=2), models.make_mesh(2, 2, 2))
    ckpt = Checkpointer(out / "checkpoints", keep=2)
    state = trainer.init_state(initial_params())
    metrics = {}
    with distributed.Lockstep(trainer, ckpt, out / "export") as lock:
        if distributed.is_main():
            batch = trainer.pack(samples())
            for name in ("first", "second"):
                state, m = lock.update(state, batch)
                metrics.update({f"{name}/{k}": np.asarray(v) for k, v in jax.device_get(m).items()})
            lock.save(state, EXTRA, step=2)
            lock.export(state, 2)
        else:
            state = lock.follow(state)
    ckpt.wait()
    restored, extra = ckpt.restore(trainer.abstract_state())
    ckpt.close()
    final = {f"state{k}": distributed.to_host(x) for k, x in _flat(state)}
    # max_bytes=256 gathers every weight in slices of its first axis: the path a 14B's layers take.
    final.update({f"restored{k}": distributed.to_host(x, max_bytes=256) for k, x in _flat(restored)})
    np.savez(out / f"process_{jax.process_index()}.npz", **final, **metrics, extra=json.dumps(extra),
             devices=np.array([jax.process_count(), jax.device_count(), jax.local_device_count()]))


def _resume_past_an_unreadable_checkpoint(out: Path) -> None:
    """Checkpoints 1 and 2 saved collectively, step 2's `extra` then damaged (as on a shared filesystem,
    every process sees it): every process must restore step 1. Each writes out/restored_I.json."""
    from jax.experimental import multihost_utils
    trainer = make_trainer(experiment(), models.make_mesh(1, -1, 1))
    ckpt = Checkpointer(out / "checkpoints", keep=3)
    state = trainer.init_state(initial_params())
    with distributed.Lockstep(trainer, ckpt, out / "export") as lock:
        if distributed.is_main():
            lock.save(state, EXTRA, step=1)
            lock.save(state, EXTRA, step=2)
        else:
            lock.follow(state)
    ckpt.wait()
    if distributed.is_main():
        (out / "checkpoints" / "2" / "extra" / "metadata").write_text("[1, 2")
    multihost_utils.sync_global_devices("damaged")
    with pytest.warns(UserWarning):
        _, extra = ckpt.restore(trainer.abstract_state())
    ckpt.close()
    (out / f"restored_{jax.process_index()}.json").write_text(json.dumps(extra))


def _flat(tree):
    return [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(tree)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int = 2, devices: int = 4, timeout: float = 300,
            check: bool = True) -> list[str]:
    """Run `python ARGS` as `processes` jax.distributed processes of `devices` CPU devices each; their
    outputs. Fails with every process's output when one fails (`check`), else returns them with each
    exit status appended as "exit N"."""
    env_base = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": str(processes),
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "rl")])}
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**env_base, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    if not check:
        return [f"{o}\nexit {p.returncode}" for p, o in zip(procs, outputs)]
    if any(p.returncode for p in procs):
        logs = "\n".join(f"--- process {i} (exit {p.returncode}) ---\n{o[-6000:]}"
                         for i, (p, o) in enumerate(zip(procs, outputs)))
        pytest.fail(f"a process failed:\n{logs}")
    return outputs


def test_a_partial_setup_names_what_is_missing(monkeypatch, capsys):
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    distributed.initialize()  # nothing set: one process, nothing to join
    assert jax.process_count() == 1
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="set JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        distributed.initialize()
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='first' is not an integer"):
        distributed.initialize(num_processes=2)
    monkeypatch.delenv("JAX_PROCESS_ID")
    assert rl.train.main(["tiny_dapo", "--dry-run", "--num-processes", "2"]) == 2
    assert "error: multi-process setup is incomplete: set JAX_PROCESS_ID" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected HOST:PORT"):  # jax raised an IndexError
        distributed.initialize("notahost", 1, 0)
    with pytest.raises(ValueError, match=r"process id 2 is not in 0..1"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    assert jax.process_count() == 1


@pytest.fixture(scope="module")
def two_by_four(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_by_four")
    _launch([__file__, str(out)])
    return out


@pytest.fixture(scope="module")
def one_by_eight(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_by_eight")
    _update_and_checkpoint(out)  # this pytest process: 8 CPU devices (tests/conftest.py)
    return out


@pytest.mark.slow
def test_two_processes_equal_one(two_by_four, one_by_eight):
    one = np.load(one_by_eight / "process_0.npz")
    assert one["devices"].tolist() == [1, 8, 8]
    state = [k for k in one.files if k.startswith("state")]
    assert len(state) > 10
    two = [np.load(two_by_four / f"process_{i}.npz") for i in (0, 1)]
    for i, run in enumerate(two):
        assert run["devices"].tolist() == [2, 8, 4]
        assert json.loads(str(run["extra"])) == EXTRA
        for k in state:
            # Every process holds the same state, and restores exactly what it saved.
            np.testing.assert_array_equal(run[k], two[0][k], err_msg=f"process {i}: {k}")
            np.testing.assert_array_equal(run[k.replace("state", "restored", 1)], run[k], err_msg=f"restored {k}")
            # gloo sums across processes in another order than one process does: float rounding only,
            # measured at most 1.1e-6 on a weight after two steps of lr 1e-2 (Adam scales noise in a
            # near-zero gradient up); a wrong shard or a lost gradient would be off by whole steps.
            np.testing.assert_allclose(run[k], one[k], rtol=1e-5, atol=5e-6, err_msg=f"process {i}: {k}")
    metrics = [k for k in one.files if k.startswith(("first/", "second/"))]
    assert "second/loss" in metrics and "first/grad_norm" in metrics
    for k in metrics:
        np.testing.assert_allclose(two[0][k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert two[0]["second/loss"] != two[0]["first/loss"]  # the second update saw the moved weights


@pytest.mark.slow
def test_process_0_alone_exports_the_gathered_params(two_by_four):
    assert [p.name for p in (two_by_four / "export").iterdir()] == ["step_000002"]
    _, exported = models.load_hf(two_by_four / "export" / "step_000002")
    run = np.load(two_by_four / "process_0.npz")
    for k, x in _flat(exported):
        np.testing.assert_array_equal(np.asarray(x), run[f"state.params{k}"], err_msg=k)


@pytest.mark.slow
def test_every_process_resumes_past_an_unreadable_checkpoint(tmp_path):
    """Every process used to move the unreadable folder aside: all but one rename failed, and that
    process died."""
    _launch([__file__, str(tmp_path), "resume"])
    assert [json.loads((tmp_path / f"restored_{i}.json").read_text()) for i in (0, 1)] == [EXTRA, EXTRA]
    assert [p.name for p in (tmp_path / "checkpoints.unreadable").iterdir()] == ["2"]


def test_a_start_up_check_failing_on_process_0_stops_every_process(tmp_path, config_only_model):
    """Process 0 alone reads the run directory's config.json: when it refused it, process 1 went on into
    the run's collectives and waited there until a timeout."""
    model = config_only_model
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"name": "tiny_dapo", "seed": 5}))
    outputs = _launch(["-m", "rl.train", "tiny_dapo", "--run-dir", str(run_dir), "--set", f"model.path={model}"],
                      timeout=120, check=False)
    assert "holds a different config" in outputs[0] and outputs[0].endswith("exit 2")
    assert "process 0 failed its start-up checks" in outputs[1] and outputs[1].endswith("exit 2")


@pytest.fixture(scope="module")
def tiny_rl(tmp_path_factory):
    """A briefly warm-started tiny model, 4 held-out problems and one embedded server the runs share."""
    # Imported here, not at the top: the worker processes need none of it (seconds of startup each).
    from rl.rollout.embedded import EmbeddedServer
    from rl.tiny import BuildSettings, build
    from rl.tiny.tasks import HELDOUT_FILE

    root = tmp_path_factory.mktemp("tiny_rl")
    model = build(root / "model", seed=0, settings=BuildSettings(steps=20), progress=False)
    held_out = root / "heldout.jsonl"
    held_out.write_text("".join(HELDOUT_FILE.read_text().splitlines(keepends=True)[:4]))
    with EmbeddedServer(model, log_path=root / "server.log") as server:
        yield {"model": model, "eval": held_out, "url": server.url}


def _train_args(tiny_rl, run_dir: Path) -> list[str]:
    settings = [f"model.path={tiny_rl['model']}", f"data.eval={tiny_rl['eval']}", f"rollout.servers={tiny_rl['url']}",
                "batch.prompts_per_step=2", "rollout.group_size=4", "rollout.eval_n=1", "rollout.dynamic_sampling=false",
                "schedule.steps=1", "schedule.checkpoint_every=1"]
    return ["tiny_dapo", "--run-dir", str(run_dir), *[x for a in settings for x in ("--set", a)]]


@pytest.mark.slow
def test_rl_train_on_two_processes_equals_one(tiny_rl, tmp_path):
    """`python -m rl.train` on 2 processes: process 0 samples, grades, logs and exports; process 1 holds
    half the devices and makes every trainer call with it; the run matches one process."""
    from rl.metrics import read_metrics

    two = tmp_path / "two"
    outputs = _launch(["-m", "rl.train", *_train_args(tiny_rl, two)])
    assert "held-out pass@1" in outputs[0] and "held-out pass@1" not in outputs[1]
    assert (two / "checkpoints" / "1" / "params" / "ocdbt.process_1").is_dir()  # process 1 wrote its shards
    assert [p.name for p in (two / "export").iterdir()] == ["step_000001"]

    one = tmp_path / "one"
    assert rl.train.main(_train_args(tiny_rl, one)) == 0  # this pytest process: 1 x 8 devices
    rows = {d: read_metrics(d) for d in (one, two)}
    assert [r["step"] for r in rows[two]] == [0, 1] and rows[two][1]["weight_version"] == 1
    for a, b in zip(rows[one], rows[two]):
        for k in a:
            if k.startswith(("time", "perf/tokens_per_s", "loss/mismatch")) or (a["step"] and k.startswith("eval/")):
                continue  # the clock; the server's batching; an evaluation sampled from the updated weights
            if k.startswith(("loss/", "optim/")):  # the update: float rounding of gloo's cross-process sums
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
            else:  # the rollouts and their grades
                assert b[k] == a[k], k
    assert rows[two][1]["loss/entropy"] > 0  # the sharded forward pass ran over both processes' devices
    exported = [models.load_hf(d / "export" / "step_000001")[1] for d in (one, two)]
    for (k, x), y in zip(_flat(exported[0]), jax.tree.leaves(exported[1])):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6, err_msg=k)


if __name__ == "__main__":
    distributed.initialize()  # from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    if sys.argv[2:] == ["resume"]:
        _resume_past_an_unreadable_checkpoint(Path(sys.argv[1]))
    else:
        _update_and_checkpoint(Path(sys.argv[1]))
