"""Checkpoints of a run with orbax: train state, plus the loop's JSON state (data position, weight_version).

Layout: <directory>/<step>/{params, train, extra}. `params` is its own item so that `load_params` (an
experiment's schedule.init_from) reads the weights without the optimizer state; `train` holds the
optimizer state, step and rng; `extra` is any JSON-able dict the loop passes.

Saves are asynchronous (the arrays are copied to host before `save` returns, so the next update may
donate them) and atomic: orbax writes into a temporary folder and renames it when complete. Restore
walks the steps from the newest and skips, with a warning naming it, any checkpoint that is
unfinished or does not read back, so a crash mid-save costs one checkpoint, not the run. Restores
land on the shardings of the target (Trainer.abstract_state()), so a run may resume on another mesh.

With several processes (rl.distributed) every process calls save and restore, in the same order:
orbax writes each process's shards and process 0 the metadata and `extra`, so the directory must be
on a filesystem every host sees.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

import models
from models.weights import abstract_params
from rl.trainer import TrainState


class ResumeError(RuntimeError):
    """The run directory holds checkpoints, but none can be resumed from."""


class Checkpointer:
    """Keeps the last `keep` checkpoints of one run in `directory`.

        ckpt = Checkpointer(run_dir / "checkpoints", keep=3)
        ckpt.save(state, extra={"data": loader.position(), "weight_version": v})  # async
        restored = ckpt.restore(trainer.abstract_state())   # None when there is nothing to resume
        if restored: state, extra = restored
        ckpt.close()                                         # waits for the last save
    """

    def __init__(self, directory, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():  # else: no checkpoint, a fresh start
            raise ResumeError(f"{self.directory} is not a directory, so this run's checkpoints cannot be read "
                              f"or saved; move it away")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("params", "train", "extra"))

    def save(self, state: TrainState, extra: dict | None = None, *, step: int | None = None) -> int:
        """Start saving `state` (and the JSON-able `extra`) as checkpoint `step` (default: state.step)."""
        step = int(jax.device_get(state.step)) if step is None else step
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
            extra=ocp.args.JsonSave(extra or {})))
        return step

    def steps(self) -> list[int]:
        """Steps of finished checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, target: TrainState, step: int | None = None,
                extra_fields: dict[str, type | Callable] | None = None) -> tuple[TrainState, dict] | None:
        """(state, extra) of checkpoint `step`, or of the newest one that reads back, on target's
        shardings; None when there is none. `extra_fields`: keys `extra` must hold, with their types (or
        predicates of the value, None when absent).

        A checkpoint that fails to read is skipped with a warning (an explicitly requested `step`
        raises instead) and moved to <directory>.unreadable/ (kept, and out of the way: orbax saves no
        step at or below its newest). When checkpoints exist but none reads back, ResumeError: a run
        never silently starts over on top of one it could not read."""
        self.wait()
        _warn_unfinished(self.directory)
        if step is not None:
            return self._restore(step, target, extra_fields or {})
        bad = []
        for s in reversed(self.steps()):
            try:
                restored = self._restore(s, target, extra_fields or {})
            except Exception as e:  # noqa: BLE001 - any failure to read means: not a usable checkpoint
                warnings.warn(f"skipping checkpoint {self.directory / str(s)}: it does not read back "
                              f"({type(e).__name__}: {str(e)[:300]})", stacklevel=2)
                bad.append(s)
                continue
            self._set_aside(bad)
            return restored
        if bad:
            raise ResumeError(f"none of the checkpoints in {self.directory} (steps {sorted(bad)}) reads back, "
                              f"so the run cannot resume; move that folder away to start it over")
        return None

    def _restore(self, step: int, target: TrainState, extra_fields: dict) -> tuple[TrainState, dict]:
        train = {"opt_state": target.opt_state, "step": target.step, "rng": target.rng}
        out = self._manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params), train=ocp.args.StandardRestore(train),
            extra=ocp.args.JsonRestore()))
        extra = out["extra"]
        if not isinstance(extra, dict):
            raise ValueError(f"extra is {type(extra).__name__}, not an object")
        for key, expect in extra_fields.items():
            value = extra.get(key)
            if isinstance(expect, type):
                ok, wanted = isinstance(value, expect) and not isinstance(value, bool), f"a {expect.__name__}"
            else:
                ok, wanted = expect(value), expect.__doc__ or expect.__name__
            if not ok:
                raise ValueError(f"extra[{key!r}] is {value!r}, not {wanted}")
        t = out["train"]
        return TrainState(out["params"], t["opt_state"], t["step"], t["rng"]), dict(extra)

    def _set_aside(self, steps: list[int]) -> None:
        """Process 0 moves them (every process renaming one shared folder raced: all but one failed);
        the others wait for it before they re-read the directory. Every process calls this once per
        restore, whatever it found unreadable itself (a shard is read by its own process only)."""
        if jax.process_index() == 0 and steps:
            aside = self.directory.with_name(self.directory.name + ".unreadable")
            aside.mkdir(exist_ok=True)
            for s in steps:
                target = aside / str(s)
                while target.exists():
                    target = target.with_name(target.name + "_")
                (self.directory / str(s)).rename(target)
                warnings.warn(f"moved unreadable checkpoint {self.directory / str(s)} to {target}", stacklevel=3)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"coderl set aside {self.directory}")
        if steps or jax.process_count() > 1:
            self._manager.reload()

    def wait(self) -> None:
        """Block until the pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _warn_unfinished(directory: Path) -> None:
    for tmp in sorted(directory.glob("*.orbax-checkpoint-tmp*")):
        warnings.warn(f"skipping checkpoint {tmp}: its save never finished", stacklevel=3)


def load_params(source, cfg: models.ModelConfig, mesh) -> dict:
    """Params only, sharded over mesh, in cfg.param_dtype: from a Hugging Face folder (config.json +
    safetensors), a run directory, its checkpoints directory (newest readable step) or one step folder.
    This is schedule.init_from: the 32K stage from the 16K run, or an SFT warm start."""
    source = Path(source)
    # A run directory holds the experiment's config.json too: its checkpoints come first.
    if (source / "config.json").is_file() and not (source / "checkpoints").is_dir():
        loaded_cfg, params = models.load_hf(source, dtype=cfg.param_dtype, mesh=mesh)
        _check_shapes(source, cfg, loaded_cfg)
        return params
    shardings = models.param_shardings(cfg, mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abstract_params(cfg), shardings)
    if (source / "params").is_dir():  # one step folder
        with ocp.StandardCheckpointer() as reader:
            return reader.restore(source.absolute() / "params", target)
    directory = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    if not directory.is_dir():
        raise FileNotFoundError(f"init_from {source}: neither a Hugging Face folder nor a checkpoint directory")
    manager = ocp.CheckpointManager(directory.absolute(), item_names=("params", "train", "extra"))
    newest_error = None
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
            except Exception as e:  # noqa: BLE001
                newest_error = newest_error or f"step {step}: {type(e).__name__}: {str(e)[:300]}"
                warnings.warn(f"skipping checkpoint {directory / str(step)}: it does not read back "
                              f"({type(e).__name__}: {str(e)[:300]})", stacklevel=2)
    finally:
        manager.close()
    # The newest step's error says why, e.g. a model of another shape than the experiment's.
    raise FileNotFoundError(f"init_from {source}: no readable checkpoint in {directory}"
                            + (f" (newest {newest_error})" if newest_error else ""))


def _check_shapes(source: Path, want: models.ModelConfig, got: models.ModelConfig) -> None:
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "tie_word_embeddings"):
        if getattr(want, field) != getattr(got, field):
            raise ValueError(f"init_from {source}/config.json: {field}={getattr(got, field)}, but the "
                             f"experiment's model has {getattr(want, field)}")
