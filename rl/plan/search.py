"""One plan (an experiment's settings compiled for one slice) and the search for settings that fit.

The search compiles candidates until one fits: first the experiment as written; then, with remat
"full" (the least memory), fewer rows per device per micro-batch (more micro-batches), halving down to
one row per device; then bigger slices at one row per device. The arithmetic (rl.plan.arith), scaled
to the last compile, skips candidates it predicts well over HBM, never a slice's one-row candidate.
"""
from __future__ import annotations

import dataclasses
import math

from rl.plan import arith
from rl.plan.compile import (BatchShape, Compiled, abstract_batch, batch_shape, compile_logprobs, compile_update,
                             shards, trainer_for)
from rl.plan.topology import Topology, bigger, devices


@dataclasses.dataclass(frozen=True)
class Plan:
    experiment: str
    topology: Topology
    micro_batches: int
    remat: str
    mesh: dict                   # data / fsdp / tensor sizes on this slice
    shape: BatchShape
    update: Compiled
    logprobs: Compiled | None
    params: int                  # per device, from the shardings (arithmetic)
    optimizer: int               # per device, the trainer's optimizer state (Adam's moments, counters)
    batch: int                   # per device, the packed batch's arrays
    activation_per_token: int    # arith.activation_bytes_per_token at this remat
    fixed_temporaries: float     # arith.fixed_temporaries, summed
    layers: int
    flops: arith.Flops

    @property
    def hbm(self) -> int:
        return self.topology.chip.hbm_bytes

    @property
    def peak(self) -> int:
        """The compile's peak; after an out-of-memory compile, its temporaries plus the arithmetic's
        arguments (the state is updated in place, so outputs add nothing)."""
        if self.update.error:
            return self.params + self.optimizer + self.batch + self.update.temporaries
        return self.update.peak

    @property
    def fits(self) -> bool:
        return not self.update.error and self.update.peak <= self.hbm

    @property
    def tokens_per_device(self) -> int:
        """Model-view tokens one device holds in one micro-batch."""
        return self.shape.rows * self.shape.row_len // (self.mesh["data"] * self.mesh["fsdp"])

    @property
    def expected_temporaries(self) -> float:
        """The arithmetic's temporaries: fixed ones plus the activations of a device's micro-batch."""
        return self.fixed_temporaries + self.tokens_per_device * self.activation_per_token

    def step_seconds(self, mfu: float) -> float:
        return self.flops.model / (self.topology.chips * self.topology.chip.peak_flops * mfu)

    @property
    def expected_peak(self) -> float:
        """The arithmetic's peak: state and batch, plus its temporaries (outputs are written in place)."""
        return self.params + self.optimizer + self.batch + self.expected_temporaries


def plan(exp, cfg, topo: Topology, *, compile: bool = True, logprobs: bool = True,
         compiler_options: dict | None = None) -> Plan:
    """Compile `exp` (its batch and model sections as they are) on `topo` and gather the figures;
    compile=False: the arithmetic alone (the Compiled figures stay empty)."""
    cfg = cfg.replace(remat=exp.model.remat)
    tr = trainer_for(exp, cfg, devices(topo), compiler_options)
    shape = batch_shape(exp, shards(tr))
    mesh = dict(tr.mesh.shape)
    update = compile_update(tr, shape) if compile else Compiled()
    lp = compile_logprobs(tr, shape) if compile and logprobs and not update.error else None
    state = tr.abstract_state()
    batch_dev = arith.per_device_bytes(_with_shardings(abstract_batch(shape), tr.batch_shardings))
    fixed = sum(arith.fixed_temporaries(cfg, mesh["fsdp"] * mesh["tensor"], mesh["tensor"]).values())
    flops = arith.step_flops(cfg, shape.token_slots, shape.row_len, cfg.remat, old_logprobs=shape.mini > 1,
                             reference=exp.objective.kl_coef > 0)
    return Plan(exp.name, topo, exp.batch.micro_batches, cfg.remat, mesh, shape, update, lp,
                arith.per_device_bytes(state.params), arith.per_device_bytes(state.opt_state), batch_dev, arith.activation_bytes_per_token(cfg, cfg.remat), fixed,
                cfg.num_layers, flops)


def temporaries_slope(exp, cfg, topo: Topology, **kw) -> tuple[float, float, Plan, Plan]:
    """Temporaries per token per layer as XLA allocates them (the difference between compiles at the
    full response length and at half of it, one row per device), against the arithmetic's
    activation bytes per token / layers. Returns (compiled, arithmetic, long plan, short plan)."""
    exp = _one_row_per_device(exp, topo)
    long = plan(exp, cfg, topo, logprobs=False, **kw)
    half = exp.replace(rollout=dict(max_response_tokens=exp.rollout.max_response_tokens // 2, context_stages=()))
    short = plan(half, cfg, topo, logprobs=False, **kw)
    tokens = long.tokens_per_device - short.tokens_per_device
    compiled = (long.update.temporaries - short.update.temporaries) / tokens / long.layers
    return compiled, long.activation_per_token / long.layers, long, short


def _with_shardings(batch, shardings):
    import jax
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), batch, shardings)


def micro_batch_ladder(exp, shard_count: int) -> list[int]:
    """Micro-batch counts that halve the rows per device each step, from the experiment's own count
    down to one row per device (counts must divide the rollouts of a mini-batch)."""
    b = exp.batch
    rollouts = b.prompts_per_step * exp.rollout.group_size // b.mini_batches
    ladder, micro = [], b.micro_batches
    while True:
        per_device = math.ceil(rollouts / micro / shard_count)
        if per_device <= 1:
            break
        target = math.ceil(per_device / 2)
        micro = next((m for m in range(micro + 1, rollouts + 1)
                      if rollouts % m == 0 and math.ceil(rollouts / m / shard_count) <= target), None)
        if micro is None:
            break
        ladder.append(micro)
    return ladder


def candidates(exp, topo: Topology, max_doublings: int):
    """(experiment, slice) in search order after the experiment as written: remat full; then more
    micro-batches down to one row per device; then slices of 2x, 4x, ... the chips at one row per device."""
    exp = exp.replace(model=dict(remat="full"))
    yield exp, topo
    for micro in micro_batch_ladder(exp, topo.chips // exp.mesh.tensor):  # rows split over data x fsdp
        yield exp.replace(batch=dict(micro_batches=micro)), topo
    if -1 not in (exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor):  # a mesh written for this slice only
        exp = exp.replace(mesh=dict(fsdp=-1))
    for _ in range(max_doublings):
        topo = bigger(topo)
        yield _one_row_per_device(exp, topo), topo


def _one_row_per_device(exp, topo: Topology):
    """exp with the micro-batch count that gives each data x fsdp shard of `topo` one row."""
    ladder = micro_batch_ladder(exp.replace(batch=dict(micro_batches=1)), topo.chips // exp.mesh.tensor)
    return exp.replace(batch=dict(micro_batches=ladder[-1] if ladder else 1))


def search(exp, cfg, topo: Topology, *, max_doublings: int = 4, log=print, **kw) -> list[Plan]:
    """Plans compiled until one fits (the last one), or the candidates tried when none does.

    After the experiment as written compiles, the arithmetic, scaled by how that compile compared
    with it, predicts each candidate's peak; candidates predicted over 115% of HBM are skipped
    (logged), except each slice's last (one row per device), so every verdict is a compile's."""
    first = plan(exp, cfg, topo, **kw)
    log(_line(first))
    tried = [first]
    if first.fits:
        return tried
    scale = first.peak / first.expected_peak if first.update.temporaries else 1.0
    todo = [c for c in candidates(exp, topo, max_doublings)
            if not (c[0] == exp and c[1] == topo)]
    for i, (candidate, slice_) in enumerate(todo):
        predicted = plan(candidate, cfg, slice_, compile=False, **kw).expected_peak * scale
        last_on_slice = i == len(todo) - 1 or todo[i + 1][1] != slice_  # one row per device: always compiled
        if predicted > 1.15 * slice_.chip.hbm_bytes and not last_on_slice:
            log(f"  {slice_.cloud_name}: micro_batches={candidate.batch.micro_batches} remat={candidate.model.remat}: "
                f"skipped, predicted {predicted / 2**30:.1f} GiB")
            continue
        tried.append(plan(candidate, cfg, slice_, **kw))
        log(_line(tried[-1]))
        if tried[-1].fits:
            return tried
        scale = tried[-1].peak / tried[-1].expected_peak if tried[-1].update.temporaries else scale
    return tried


def _line(p: Plan) -> str:
    verdict = "fits" if p.fits else "does not fit"
    return (f"  {p.topology.cloud_name}: micro_batches={p.micro_batches} remat={p.remat}: {p.peak / 2**30:.1f} "
            f"of {p.hbm / 2**30:.1f} GiB, {verdict} (compiled in {p.update.seconds:.0f} s)")
