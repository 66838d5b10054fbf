"""One run over many processes (hosts): jax.distributed setup, process 0's role, host data between them.

Each process owns its local devices; the mesh spans jax.devices(), every device of every process.
Process 0 runs everything that talks to the world (rollout servers, sandbox, logs, exports) and tells
the others what they need; the trainer's collective calls (update, export gather, checkpoint save) run
on every process in the same order (`Lockstep`). With one process every helper here passes through.

    distributed.initialize(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)  # or auto=True
    lock = distributed.Lockstep(trainer, ckpt, run_dir / "export")
    if distributed.is_main():
        state, metrics = lock.update(state, batch)   # process 0 sends the batch, then all update
        lock.stop()
    else:
        state = lock.follow(state)                   # the same calls, until process 0 says stop
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from rl import packing

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False) -> None:
    """Join the run's processes (before any other JAX call). The arguments default to the environment
    variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `auto` lets JAX detect the
    cluster (Cloud TPU pod slice, SLURM, Open MPI). None of them: one process, nothing to join."""
    coordinator = coordinator or os.environ.get(ENV[0]) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV[1])
    process_id = process_id if process_id is not None else _env_int(ENV[2])
    if coordinator is None and num_processes is None and process_id is None and not auto:
        return
    if not auto and None in (coordinator, num_processes, process_id):
        missing = [name for name, v in zip(ENV, (coordinator, num_processes, process_id)) if v is None]
        raise ValueError(f"multi-process setup is incomplete: set {', '.join(missing)} (or --coordinator, "
                         f"--num-processes, --process-id), or use auto-detection (--distributed)")
    if coordinator is not None and not re.fullmatch(r"\S+:\d+", coordinator):  # jax failed with an IndexError
        raise ValueError(f"coordinator address {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
    if not auto and not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1} (--num-processes {num_processes})")
    # The CPU backend's cross-process collectives (tests, CPU clusters); GPU and TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def is_main() -> bool:
    """Process 0: the one that runs the rollouts, the sandbox, the logs and the exports."""
    return jax.process_index() == 0


def agree(errors: list[str]) -> list[str]:
    """This process's start-up errors, or, when only another process failed, one line saying so: every
    process then stops (a collective, each calls it once)."""
    if jax.process_count() == 1:
        return errors
    failed = np.asarray(multihost_utils.process_allgather(np.int32(bool(errors))))
    if errors or not failed.any():
        return errors
    return [f"process {int(np.argmax(failed))} failed its start-up checks (its output says why)"]


def broadcast(message: dict | None = None, arrays: dict[str, np.ndarray] | None = None
              ) -> tuple[dict, dict[str, np.ndarray]]:
    """Process 0's JSON-able `message` and host `arrays` on every process (the others pass nothing).
    A collective: every process calls it, in the same order."""
    if jax.process_count() == 1:
        return message or {}, arrays or {}
    if is_main():
        for name, x in (arrays or {}).items():
            if np.asarray(x).dtype.itemsize > 4:  # JAX without x64 would narrow them on the way
                raise ValueError(f"broadcast: array {name!r} is {np.asarray(x).dtype}; send 32-bit or narrower")
        shapes = {k: [list(np.shape(x)), np.asarray(x).dtype.str] for k, x in (arrays or {}).items()}
        text = json.dumps({"message": message or {}, "arrays": shapes}).encode()
        size = 1 << max(10, (len(text) - 1).bit_length())  # a few sizes: each new shape compiles once
        header = np.frombuffer(text.ljust(size, b" "), np.uint8)
    else:
        header = np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(header.size)))
    if header.size != size:
        header = np.zeros(size, np.uint8)
    head = json.loads(bytes(multihost_utils.broadcast_one_to_all(header)).decode())
    if is_main():
        local = {k: np.asarray(x) for k, x in arrays.items()} if arrays else {}
    else:
        local = {k: np.zeros(shape, np.dtype(dtype)) for k, (shape, dtype) in head["arrays"].items()}
    received = multihost_utils.broadcast_one_to_all(local) if local else {}
    return head["message"], {k: np.asarray(v, np.dtype(head["arrays"][k][1])) for k, v in received.items()}


def global_arrays(tree, shardings):
    """Host arrays that every process holds whole -> global jax.Arrays on `shardings` (each process
    places its own devices' slices). With one process jit places host arrays itself."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda x, sh: jax.make_array_from_callback(np.shape(x), sh, lambda idx: x[idx]),
                        tree, shardings)


def to_host(x, max_bytes: int = 2**30) -> np.ndarray:
    """A global array as numpy, whole, on every process (a collective when other processes hold shards).
    A gather replicates its input on every device, so arrays above max_bytes go in slices of axis 0
    (a 14B's stacked layer weights are several GB)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    pieces = min(-(-x.nbytes // max_bytes), x.shape[0] if x.ndim else 1)
    if pieces > 1:
        bounds = np.linspace(0, x.shape[0], pieces + 1).astype(int)
        return np.concatenate([to_host(x[a:b], max_bytes) for a, b in zip(bounds[:-1], bounds[1:])])
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Lockstep:
    """The trainer's collective calls, made by every process in the same order. Process 0 (the loop)
    announces each one with its arguments; the others wait in `follow` and make the same call. With
    one process the announcements are skipped.

    Other processes wait inside the announcement's collective while process 0 samples and grades."""

    def __init__(self, trainer, ckpt, export_dir):
        self.trainer, self.ckpt, self.export_dir = trainer, ckpt, export_dir

    def update(self, state, batch: packing.Batch):
        """trainer.update on every process; process 0 sends the packed batch."""
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(packing.Batch)}
        broadcast({"op": "update"}, fields)
        return self._update(state, batch)

    def export(self, state, version: int):
        """trainer.export: every process gathers the params, process 0 writes the folder."""
        broadcast({"op": "export", "version": version})
        return self.trainer.export(state, self.export_dir, version)

    def save(self, state, extra: dict, step: int) -> None:
        """ckpt.save on every process (orbax writes each process's shards, process 0 the metadata)."""
        broadcast({"op": "save", "step": step, "extra": extra})
        self.ckpt.save(state, extra, step=step)

    def stop(self, error: str | None = None) -> None:
        """Release the other processes from `follow`; with `error` they raise it."""
        broadcast({"op": "stop", "error": error})

    def __enter__(self) -> "Lockstep":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Process 0 leaving the loop, however it leaves, releases the others (an error goes with them,
        unless it struck inside a collective call: then JAX's heartbeat ends them)."""
        if is_main():
            self.stop(None if error is None else f"{kind.__name__}: {error}")

    def follow(self, state):
        """On processes other than 0: make process 0's calls until it says stop; the last state."""
        while True:
            message, arrays = broadcast()
            op = message.get("op")
            if op == "update":
                state, _ = self._update(state, packing.Batch(**arrays))
            elif op == "export":
                self.trainer.export(state, self.export_dir, message["version"])
            elif op == "save":
                self.ckpt.save(state, message["extra"], step=message["step"])
            elif op == "stop":
                if message.get("error"):
                    raise RuntimeError(f"process 0 stopped the run: {message['error']}")
                return state
            else:
                raise RuntimeError(f"process {jax.process_index()}: unknown call {message!r} from process 0")

    def _update(self, state, batch: packing.Batch):
        return self.trainer.update(state, global_arrays(batch, self.trainer.batch_shardings))
