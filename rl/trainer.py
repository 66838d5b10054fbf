"""The policy update: train state, optimizer, and one jitted, sharded update per batch of rollouts.

`Trainer.update(state, batch)` is one jitted function with explicit shardings and the state donated.
A batch (rl.packing) is [mini_batches, micro_batches, ...]: every mini-batch is one optimizer step,
every micro-batch one gradient-accumulation step under `lax.scan`. Each micro-batch's loss divides by
its mini-batch's GLOBAL token / sequence counts (rl.losses.loss_normalizers over all its micro-batches;
jit sums across devices), so the accumulated gradient is exactly the full mini-batch's.

Old logprobs: with one mini-batch the policy that sampled is the one being updated, so old =
stop_gradient(current) and no extra forward runs; with more, one forward pass with the pre-update
params computes them for all mini-batches first. The rollout engine's own logprobs feed truncated
importance sampling (objective.tis_cap) and the mismatch metrics.

Mixed precision: params (and Adam's moments) stay in model.param_dtype (float32 master weights); the
model casts them to model.dtype (bfloat16) for compute, so gradients come back in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import models
from models.logprobs import DEFAULT_CHUNK
from models.sharding import unsplit_weights
from models.weights import abstract_params
from rl import distributed, packing
from rl.losses import loss_normalizers, policy_loss

EXPORT_MARKER = "COMPLETE"  # written last into an export folder: its presence means the folder is whole

# How per-micro-batch metrics of rl.losses.policy_loss combine over micro- and mini-batches.
TOKEN_MEAN_METRICS = ("clip_frac_low", "clip_frac_high", "ratio_mean", "approx_kl", "mismatch_mean",
                      "tis_capped_frac", "kl_ref", "entropy")
MAX_METRICS = ("ratio_max", "mismatch_max")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything an update changes. A frozen dataclass registered as a pytree: jax ships this
    (`register_dataclass`), so flax.struct would add a dependency and nothing else."""
    params: dict
    opt_state: Any
    step: jax.Array  # int32 [], updates applied
    rng: jax.Array   # uint32 [2], the run's key (the update draws none; the loop may fold_in the step)

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


def lr_schedule(opt) -> optax.Schedule:
    """Linear warmup then constant (the seeds' schedule): optimizer step k (from 0) uses
    lr * min(1, (k + 1) / warmup_steps), so no step is wasted at lr 0 and step warmup_steps - 1 is the
    first at full lr."""
    if opt.warmup_steps <= 0:
        return optax.constant_schedule(opt.lr)
    return lambda count: opt.lr * jnp.minimum(1.0, (count + 1) / opt.warmup_steps)


def make_optimizer(opt) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (decoupled weight decay on every weight, as verl's torch AdamW)."""
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=lr_schedule(opt), b1=opt.b1, b2=opt.b2,
                                                  weight_decay=opt.weight_decay)
    return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)


def _gather(x_RL1, index_NT):
    """Per-token values of the model view [R, L-1] (value at t predicts token t+1) at the loss view's
    flat token positions [N, Tr]."""
    x_RL = jnp.pad(x_RL1, ((0, 0), (1, 0)))  # now [r, t] belongs to token t
    return x_RL.reshape(-1)[index_NT]


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the compiled update depends on besides its arguments. Hashable, so Trainers built
    alike (the tests build many) share one compiled function."""
    objective: Any  # rl.experiment.ObjectiveSection
    optimizer: Any  # rl.experiment.OptimizerSection
    cfg: models.ModelConfig
    mesh: Mesh
    chunk_size: int
    compute_entropy: bool
    compiler_options: tuple  # sorted (XLA option, value) pairs
    rollout_logprobs: bool = True  # rollout.logprobs: use the servers' logprobs (TIS, mismatch metrics)
    temperature: float = 1.0  # rollout.temperature: the policy that sampled is softmax(logits / T)

    @functools.cached_property
    def shardings(self):
        """(state shardings, abstract state, batch shardings) on this mesh."""
        param_sh = models.param_shardings(self.cfg, self.mesh)
        replicated = NamedSharding(self.mesh, P())
        optimizer = make_optimizer(self.optimizer)
        params_shape = abstract_params(self.cfg)
        opt_shape = jax.eval_shape(optimizer.init, params_shape)
        opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, opt_shape, param_sh,
                                       transform_non_params=lambda _: replicated)
        state_sh = TrainState(param_sh, opt_sh, replicated, replicated)
        state_shape = TrainState(params_shape, opt_shape, jax.ShapeDtypeStruct((), jnp.int32),
                                 jax.ShapeDtypeStruct((2,), jnp.uint32))
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shape, state_sh)
        rows = NamedSharding(self.mesh, P(None, None, ("data", "fsdp")))  # the row / sequence axis of every field
        batch_sh = packing.Batch(*([rows] * len(dataclasses.fields(packing.Batch))))
        return state_sh, abstract, batch_sh


@functools.cache
def _jitted_update(static: _Static):
    state_sh, _, batch_sh = static.shardings
    reference_sh = state_sh.params if static.objective.kl_coef > 0 else None
    replicated = NamedSharding(static.mesh, P())
    return jax.jit(functools.partial(_update_fn, static), in_shardings=(state_sh, batch_sh, reference_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=0,
                   compiler_options=dict(static.compiler_options) or None)


def _logprobs(static: _Static, params, tokens_RL, segment_ids_RL, index_NT, entropy: bool):
    """Logprobs (and entropies) of the loss view's tokens under params, from the packed model view, at the
    rollout temperature: the ratio is that of the policy that sampled (as verl's actor divides its logits)."""
    out = models.token_logprobs(params, static.cfg, tokens_RL, segment_ids=segment_ids_RL,
                                return_entropy=entropy, chunk_size=static.chunk_size, temperature=static.temperature)
    return jax.tree.map(lambda x: _gather(x, index_NT), out)


def _micro_loss(static: _Static, params, mb, old, reference, normalizers):
    """Loss and metrics of one micro-batch. old: (old logprobs, entropies or None) from the pre-update
    pass, or None when the current policy is the sampling one."""
    obj = static.objective
    if old is None:
        out = _logprobs(static, params, mb.tokens, mb.segment_ids, mb.index, static.compute_entropy)
        logp_NT, entropy_NT = out if static.compute_entropy else (out, None)
        # One optimizer step per batch: the sampling policy is the current one.
        old_logp_NT, entropy_NT = jax.lax.stop_gradient((logp_NT, entropy_NT))
    else:
        logp_NT = _logprobs(static, params, mb.tokens, mb.segment_ids, mb.index, False)
        old_logp_NT, entropy_NT = old
    ref_logp_NT = None
    if reference is not None:
        ref_logp_NT = jax.lax.stop_gradient(_logprobs(static, reference, mb.tokens, mb.segment_ids, mb.index, False))
    hyper = {k: getattr(obj, k) for k in ("eps_low", "eps_high") if getattr(obj, k) is not None}
    loss, metrics = policy_loss(
        obj.name, logp_NT, old_logp_NT, mb.advantages, mb.mask, kl_coef=obj.kl_coef, ref_logp=ref_logp_NT,
        rollout_logp=mb.rollout_logp if static.rollout_logprobs else None, tis_cap=obj.tis_cap, entropy=entropy_NT,
        **_overlong(obj, mb.truncated), **normalizers, **hyper)
    metrics["sequences"] = mb.mask.any(axis=-1).sum()
    return loss, metrics


def _overlong(obj, truncated):
    """policy_loss / loss_normalizers arguments for objective.overlong ("none": truncation ignored)."""
    if obj.overlong == "none":
        return dict(truncated=None)
    return dict(truncated=truncated, overlong=obj.overlong)


def _update_fn(static: _Static, state: TrainState, batch: packing.Batch, reference):
    mini, micro = batch.tokens.shape[:2]
    optimizer = make_optimizer(static.optimizer)
    param_sh = static.shardings[0].params
    old = None
    if mini > 1:  # old logprobs (and entropies) from the pre-update params, for every mini-batch, first
        flat = jax.tree.map(lambda x: x.reshape((mini * micro,) + x.shape[2:]), batch)

        def old_step(_, mb):
            out = _logprobs(static, state.params, mb.tokens, mb.segment_ids, mb.index, static.compute_entropy)
            return None, out if static.compute_entropy else (out, None)

        _, old = jax.lax.scan(old_step, None, flat)
        old = jax.lax.stop_gradient(jax.tree.map(lambda x: x.reshape(batch.index.shape), old))

    def mini_step(carry, xs):
        params, opt_state = carry
        mb_all, old_all = xs
        # The whole mini-batch's token / sequence counts: every micro-batch divides by them.
        normalizers = loss_normalizers(mb_all.mask.reshape(-1, mb_all.mask.shape[-1]),
                                       **_overlong(static.objective, mb_all.truncated.reshape(-1)))

        def micro_step(grads, xs):
            mb, old = xs
            (loss, metrics), g = jax.value_and_grad(_micro_loss, argnums=1, has_aux=True)(
                static, params, mb, old, reference, normalizers)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return jax.lax.with_sharding_constraint(grads, param_sh), dict(metrics, loss=loss)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads, metrics = jax.lax.scan(micro_step, jax.lax.with_sharding_constraint(zeros, param_sh), (mb_all, old_all))

        def step(params, opt_state):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        # A mini-batch without a token (groups missing after the refill cap) takes no step: AdamW's
        # momentum and weight decay would still move the weights, and warmup would advance.
        active = normalizers["token_normalizer"] > 0
        params, opt_state = jax.lax.cond(active, step, lambda p, o: (p, o), params, opt_state)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=opt_state[1].hyperparams["learning_rate"],
                       active=active)
        return (params, opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(mini_step, (state.params, state.opt_state), (batch, old))
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), _combine_metrics(metrics)


class Trainer:
    """Builds, updates and exports the train state of one experiment on one mesh.

        trainer = Trainer(exp, cfg, mesh)
        state = trainer.init_state(params)            # or a checkpoint restored onto trainer.abstract_state()
        batch = trainer.pack(samples)                  # rl.packing.Sample list -> rl.packing.Batch
        state, metrics = trainer.update(state, batch)  # metrics: dict of device scalars
        trainer.export(state, export_dir, version)     # HF folder export_dir/step_{version:06d}
    """

    def __init__(self, exp, cfg: models.ModelConfig, mesh: Mesh, *, chunk_size: int = DEFAULT_CHUNK,
                 compute_entropy: bool = True, compiler_options: dict | None = None):
        """cfg: the model config with the experiment's runtime choices (`rl.experiment.model_config(exp)`); chunk_size:
        rows per logits chunk (models.logprobs); compute_entropy: report the policy's mean entropy (a
        little extra work in the logprob pass); compiler_options: XLA options for the update's compile
        (e.g. GPU scheduler flags; the tests lower xla_backend_optimization_level to compile faster)."""
        self.exp, self.cfg, self.mesh = exp, cfg, mesh
        unsplit = unsplit_weights(cfg, mesh)
        if unsplit:
            warnings.warn(f"mesh {dict(mesh.shape)} does not divide these weights, so every device on that axis "
                          f"holds them whole: {'; '.join(unsplit[:6])}{' ...' if len(unsplit) > 6 else ''} "
                          "(choose mesh sizes that divide the model's dimensions)", RuntimeWarning, stacklevel=2)
        self._static = _Static(exp.objective, exp.optimizer, cfg, mesh, chunk_size, compute_entropy,
                               tuple(sorted((compiler_options or {}).items())), exp.rollout.logprobs,
                               float(exp.rollout.temperature))
        self.optimizer = make_optimizer(exp.optimizer)
        self.state_shardings, self._abstract, self.batch_shardings = self._static.shardings
        self.param_shardings = self.state_shardings.params
        self.reference = None

    # ---- state ---------------------------------------------------------------------------------
    @property
    def uses_reference(self) -> bool:
        return self.exp.objective.kl_coef > 0

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state on this mesh: the target of a checkpoint restore."""
        return self._abstract

    def init_state(self, params, seed: int | None = None) -> TrainState:
        """A fresh state around params (any placement; they are resharded). With kl_coef > 0 these
        params also become the frozen reference model unless `set_reference` was called. The state
        holds its own copy: updates donate it, never the caller's arrays."""
        params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, self.cfg.param_dtype), params),
                                self.param_shardings, may_alias=False)
        if self.uses_reference and self.reference is None:
            self.set_reference(params)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)
        seed = self.exp.seed if seed is None else seed
        replicated = self.state_shardings.step
        return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), replicated),
                          jax.device_put(jax.random.PRNGKey(seed), replicated))

    def set_reference(self, params) -> None:
        """The frozen reference policy of the KL term (kept in the compute dtype; only when kl_coef > 0).
        After a restore, pass the run's initial params again."""
        if not self.uses_reference:
            raise ValueError("objective.kl_coef is 0: no reference model is kept")
        # Never aliased to the given arrays: those may be the train state's, which each update donates.
        self.reference = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, self.cfg.dtype), params),
                                        self.param_shardings, may_alias=False)

    # ---- update --------------------------------------------------------------------------------
    def pack(self, samples) -> packing.Batch:
        """rl.packing.pack with this experiment's batch settings and this mesh's shard count."""
        b = self.exp.batch
        return packing.pack(samples, mini_batches=b.mini_batches, micro_batches=b.micro_batches, pack=b.pack,
                            row_len=b.max_tokens_per_row, shards=self.mesh.shape["data"] * self.mesh.shape["fsdp"])

    def update(self, state: TrainState, batch: packing.Batch) -> tuple[TrainState, dict]:
        """One RL step: mini_batches optimizer steps over the batch. `state` is donated (do not reuse
        it). Metrics are device scalars (jax.device_get them when logging)."""
        if self.uses_reference and self.reference is None:
            raise ValueError("objective.kl_coef > 0 needs a reference model: call set_reference(params)")
        return _jitted_update(self._static)(state, batch, self.reference)

    # ---- ahead-of-time compilation (rl.plan) ---------------------------------------------------
    def lower_update(self, batch: packing.Batch) -> jax.stages.Lowered:
        """The update lowered against abstract_state() for `batch` (arrays or jax.ShapeDtypeStruct),
        on any mesh, TPU compile-only devices included: nothing runs and nothing is allocated.
        `.compile()` gives XLA's memory and cost analyses."""
        reference = None
        if self.uses_reference:
            reference = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, self.cfg.dtype, sharding=s.sharding),
                                     self._abstract.params)
        return _jitted_update(self._static).lower(self._abstract, batch, reference)

    def lower_logprobs(self, batch: packing.Batch) -> jax.stages.Lowered:
        """The forward-only logprob pass over one micro-batch of `batch` (what the update runs first for
        the old logprobs when mini_batches > 1), lowered like lower_update."""
        rows = NamedSharding(self.mesh, P(("data", "fsdp")))
        fn = jax.jit(functools.partial(_logprobs, self._static, entropy=self._static.compute_entropy),
                     in_shardings=(self.param_shardings, rows, rows, rows))
        mb = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype), batch)
        return fn.lower(self._abstract.params, mb.tokens, mb.segment_ids, mb.index)

    # ---- export --------------------------------------------------------------------------------
    def export(self, state: TrainState, export_dir, version: int, tokenizer_from=None) -> Path:
        """Write the current params as a Hugging Face folder export_dir/step_{version:06d} for the
        rollout servers, in the compute dtype. Written into a temporary folder, marked complete with
        EXPORT_MARKER, then renamed, so a reader never sees a half-written version. Tokenizer files
        are copied from `tokenizer_from` (default: exp.model.path) when present. Every process calls it
        (rl.distributed.Lockstep); only process 0 writes."""
        export_dir = Path(export_dir)
        final = export_dir / f"step_{version:06d}"
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(self.cfg.dtype), p))(state.params)
        # With several processes every one takes part in gathering the shards; process 0 alone writes.
        params = jax.tree.map(distributed.to_host, params)
        if not distributed.is_main():
            return final
        tmp = export_dir / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        models.save_hf(tmp, self.cfg.replace(param_dtype=self.cfg.dtype), params)
        source = tokenizer_from or self.exp.model.path
        if source and Path(source).is_dir():
            for f in Path(source).iterdir():
                weights = f.name.endswith((".safetensors", ".safetensors.index.json"))
                if f.is_file() and not weights and f.name not in ("config.json", EXPORT_MARKER):
                    shutil.copy2(f, tmp / f.name)
        (tmp / EXPORT_MARKER).write_text(json.dumps({"version": version, "step": int(jax.device_get(state.step))}))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final


def _combine_metrics(m: dict) -> dict:
    """[mini, micro] per-micro-batch metrics -> scalars: token-weighted means where the metric is per
    token, maxima of maxima, sums of counts; the loss is the mean of the mini-batch losses."""
    tokens = m["tokens"].astype(jnp.float32)
    sequences = m["sequences"].astype(jnp.float32)
    out = {k: (m[k] * tokens).sum() / jnp.maximum(tokens.sum(), 1) for k in TOKEN_MEAN_METRICS if k in m}
    out.update({k: m[k].max() for k in MAX_METRICS if k in m})
    out["overlong_frac"] = (m["overlong_frac"] * sequences).sum() / jnp.maximum(sequences.sum(), 1)
    out["tokens"], out["sequences"] = m["tokens"].sum(), m["sequences"].sum()
    active = m["active"].astype(jnp.float32)  # [mini]: the mini-batches that took a step
    steps = jnp.maximum(active.sum(), 1)
    out["loss"] = (m["loss"].sum(axis=1) * active).sum() / steps
    out["grad_norm"], out["lr"] = (m["grad_norm"] * active).sum() / steps, m["lr"][-1]
    return out
