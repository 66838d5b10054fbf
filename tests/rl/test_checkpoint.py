"""Checkpoints: save, restore and continue is bit-identical; restore onto another mesh; unreadable or
unfinished checkpoints are skipped with a warning; init_from loads params only; atomic HF export."""
import shutil

import jax
import numpy as np
import pytest

import models
from rl.checkpoint import Checkpointer, load_params
from rl.trainer import EXPORT_MARKER
from trainer_setup import CFG, assert_trees_close, experiment, initial_params, mesh_2x2x2, samples, single_device_mesh
from trainer_setup import trainer as make_trainer

EXTRA = {"step": 1, "data": {"epoch": 1, "offset": 48, "seed": 7}, "weight_version": 1}


def _continue(trainer, state, batch, n=2):
    for _ in range(n):
        state, _ = trainer.update(state, batch)
    return jax.device_get(state)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One update, a checkpoint (async) at step 1, then two more updates without interruption."""
    directory = tmp_path_factory.mktemp("run") / "checkpoints"
    trainer = make_trainer(experiment(), single_device_mesh())
    batch = trainer.pack(samples())
    state, _ = trainer.update(trainer.init_state(initial_params()), batch)
    saved = jax.device_get(state)
    ckpt = Checkpointer(directory, keep=2)
    ckpt.save(state, EXTRA)  # async: the next update donates these buffers while the write goes on
    after = _continue(trainer, state, batch)
    ckpt.close()
    return dict(directory=directory, trainer=trainer, batch=batch, saved=saved, after=after)


def test_restore_and_continue_is_bit_identical(saved_run):
    trainer, batch = saved_run["trainer"], saved_run["batch"]
    ckpt = Checkpointer(saved_run["directory"])
    state, extra = ckpt.restore(trainer.abstract_state())
    ckpt.close()
    assert extra == EXTRA and int(state.step) == 1
    resumed = _continue(trainer, state, batch)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(saved_run["after"])):
        np.testing.assert_array_equal(a, b)


def test_restore_onto_another_mesh(saved_run):
    trainer = make_trainer(experiment(micro_batches=2), mesh_2x2x2())  # the compile test_trainer made
    ckpt = Checkpointer(saved_run["directory"])
    state, _ = ckpt.restore(trainer.abstract_state())
    ckpt.close()
    gate = state.params["layers"]["gate"]
    assert gate.sharding == trainer.param_shardings["layers"]["gate"] and len(gate.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(saved_run["saved"])):
        np.testing.assert_array_equal(a, b)  # resharding moves values, never changes them
    resumed = _continue(trainer, state, trainer.pack(samples()))
    assert_trees_close(resumed.params, saved_run["after"].params, rtol=1e-4, atol=5e-4)  # see test_trainer


def test_unreadable_and_unfinished_checkpoints_are_skipped(saved_run, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved_run["directory"] / "1", directory / "1")
    shutil.copytree(saved_run["directory"] / "1", directory / "2")
    # Step 2 lost its array data (a half-copied or half-written folder); step 3 never finished.
    for f in (directory / "2" / "params").rglob("*"):
        if f.is_file() and "metadata" not in f.name:
            f.unlink()
    shutil.copytree(saved_run["directory"] / "1", directory / "3.orbax-checkpoint-tmp-1234")
    ckpt = Checkpointer(directory)
    assert ckpt.steps() == [1, 2]
    with pytest.warns(UserWarning) as record:
        state, extra = ckpt.restore(saved_run["trainer"].abstract_state())
    ckpt.close()
    messages = " ".join(str(w.message) for w in record)
    assert str(directory / "2") in messages and "3.orbax-checkpoint-tmp-1234" in messages
    assert int(state.step) == 1 and extra == EXTRA


def test_unreadable_checkpoint_is_set_aside_so_its_step_saves_again(saved_run, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved_run["directory"] / "1", directory / "1")
    shutil.copytree(saved_run["directory"] / "1", directory / "2")
    (directory / "2" / "extra" / "metadata").write_text("garbage{{")
    ckpt = Checkpointer(directory)
    with pytest.warns(UserWarning) as record:
        state, _ = ckpt.restore(saved_run["trainer"].abstract_state())
    assert [str(w.message).split(":")[0] for w in record] == [f"skipping checkpoint {directory / '2'}",
                                                              f"moved unreadable checkpoint {directory / '2'} to "
                                                              f"{tmp_path / 'checkpoints.unreadable' / '2'}"]
    assert int(state.step) == 1 and (tmp_path / "checkpoints.unreadable" / "2" / "extra").is_dir()
    ckpt.save(state, {**EXTRA, "step": 2}, step=2)  # orbax skipped a step at or below its newest one
    ckpt.close()
    again = Checkpointer(directory)
    assert again.steps() == [1, 2] and again.restore(saved_run["trainer"].abstract_state())[1]["step"] == 2
    again.close()


@pytest.mark.parametrize("extra", [{}, {**EXTRA, "weight_version": "six"}, {**EXTRA, "data": {"offset": 0}},
                                   {**EXTRA, "data": {"epoch": "1", "offset": 0}}, {**EXTRA, "best": [1]}])
def test_checkpoint_with_wrong_loop_fields_is_skipped(saved_run, tmp_path, extra):
    """Wrong types of the loop's fields (a data position without an epoch, a best that is a list) raised
    KeyError / AttributeError mid-resume; such a checkpoint is skipped as an unreadable one is."""
    from rl.loop import EXTRA_FIELDS
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved_run["directory"] / "1", directory / "1")
    trainer = saved_run["trainer"]
    ckpt = Checkpointer(directory)
    state, _ = ckpt.restore(trainer.abstract_state())
    ckpt.save(state, extra, step=2)
    ckpt.wait()
    with pytest.warns(UserWarning, match="checkpoints/2"):
        _, got = ckpt.restore(trainer.abstract_state(), extra_fields=EXTRA_FIELDS)
    ckpt.close()
    assert got == EXTRA  # step 1's


def test_no_readable_checkpoint_refuses_to_start_over(saved_run, tmp_path):
    from rl.checkpoint import ResumeError
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved_run["directory"] / "1", directory / "1")
    (directory / "1" / "extra" / "metadata").write_text("garbage{{")
    ckpt = Checkpointer(directory)
    with pytest.warns(UserWarning), pytest.raises(ResumeError, match="cannot resume"):
        ckpt.restore(saved_run["trainer"].abstract_state())
    ckpt.close()
    assert (directory / "1").is_dir()  # nothing moved: the user decides


def test_a_checkpoints_path_that_is_a_file_refuses_to_start_over(tmp_path):
    """It read as "no checkpoint": the run started over on top of the old one, then failed to save."""
    from rl.checkpoint import ResumeError
    (tmp_path / "checkpoints").write_text("x")
    with pytest.raises(ResumeError, match="checkpoints is not a directory"):
        Checkpointer(tmp_path / "checkpoints")


def test_keeps_the_last_k(saved_run, tmp_path):
    trainer = saved_run["trainer"]
    state = trainer.init_state(initial_params())
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        ckpt.save(state, {"weight_version": step}, step=step)
    ckpt.close()
    assert Checkpointer(tmp_path / "ckpt").steps() == [2, 3]


def test_init_from_loads_params_from_checkpoint_or_hf_folder(saved_run, tmp_path):
    mesh = single_device_mesh()
    run_dir = tmp_path / "run"  # as rl.train leaves it: the experiment's config.json beside checkpoints/
    shutil.copytree(saved_run["directory"], run_dir / "checkpoints")
    (run_dir / "config.json").write_text('{"name": "run", "model": {}}')
    from_ckpt = load_params(run_dir, CFG, mesh)
    assert_trees_close(from_ckpt, saved_run["saved"].params, rtol=0, atol=0)
    models.save_hf(tmp_path / "hf", CFG, saved_run["saved"].params)
    assert_trees_close(load_params(tmp_path / "hf", CFG, mesh), saved_run["saved"].params, rtol=0, atol=0)
    with pytest.raises(ValueError, match="hidden_size"):
        load_params(tmp_path / "hf", CFG.replace(hidden_size=64), mesh)
    # From checkpoints, another model's shapes were "no readable checkpoint", the cause only in warnings.
    with pytest.warns(UserWarning), pytest.raises(FileNotFoundError, match=r"no readable checkpoint .*\(newest step \d+: .*shape"):
        load_params(run_dir, CFG.replace(num_layers=CFG.num_layers + 1), mesh)


def test_export_is_versioned_and_complete(saved_run, tmp_path):
    trainer = make_trainer(experiment(), single_device_mesh(), CFG.replace(dtype="bfloat16"))
    state = trainer.init_state(saved_run["saved"].params)
    folder = trainer.export(state, tmp_path / "export", version=10)
    assert folder == tmp_path / "export" / "step_000010" and (folder / EXPORT_MARKER).is_file()
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["step_000010"]  # no temp folder left
    cfg, params = models.load_hf(folder)
    assert cfg.param_dtype == "bfloat16"  # the rollout servers' dtype
    assert_trees_close(params, jax.tree.map(lambda x: x.astype("bfloat16"), saved_run["saved"].params), rtol=0, atol=0)
