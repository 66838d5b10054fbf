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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import models
from models.logprobs import DEFAULT_CHUNK
from models.weights import abstract_params
from rl import packing
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


def model_config(exp, hf_path=None) -> models.ModelConfig:
    """The model's config.json (exp.model.path) with the experiment's runtime choices applied."""
    m = exp.model
    cfg = models.ModelConfig.from_file(Path(hf_path or m.path))
    return cfg.replace(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention=m.attention)


def lr_schedule(opt) -> optax.Schedule:
    """Linear warmup from 0 over opt.warmup_steps optimizer steps, then constant (the seeds' schedule)."""
    if opt.warmup_steps <= 0:
        return optax.constant_schedule(opt.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, opt.warmup_steps),
                                 optax.constant_schedule(opt.lr)], [opt.warmup_steps])


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


class Trainer:
    """Builds, updates and exports the train state of one experiment on one mesh.

        trainer = Trainer(exp, cfg, mesh)
        state = trainer.init_state(params)            # or a checkpoint restored onto trainer.abstract_state()
        batch = trainer.pack(samples)                  # rl.packing.Sample list -> rl.packing.Batch
        state, metrics = trainer.update(state, batch)  # metrics: dict of device scalars
        trainer.export(state, export_dir, version)     # HF folder export_dir/step_{version:06d}
    """

    def __init__(self, exp, cfg: models.ModelConfig, mesh: Mesh, *, chunk_size: int = DEFAULT_CHUNK,
                 compute_entropy: bool = True):
        self.exp, self.cfg, self.mesh = exp, cfg, mesh
        self.chunk_size, self.compute_entropy = chunk_size, compute_entropy
        self.optimizer = make_optimizer(exp.optimizer)
        self.param_shardings = models.param_shardings(cfg, mesh)
        self.replicated = NamedSharding(mesh, P())
        params_shape = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                       abstract_params(cfg), self.param_shardings)
        opt_shapes = jax.eval_shape(self.optimizer.init, params_shape)
        opt_shardings = optax.tree_map_params(self.optimizer, lambda _, sh: sh, opt_shapes, self.param_shardings,
                                              transform_non_params=lambda _: self.replicated)
        self.state_shardings = TrainState(self.param_shardings, opt_shardings, self.replicated, self.replicated)
        self._abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      TrainState(params_shape, opt_shapes, jax.ShapeDtypeStruct((), jnp.int32),
                                                 jax.ShapeDtypeStruct((2,), jnp.uint32)), self.state_shardings)
        self.reference = None
        rows = NamedSharding(mesh, P(None, None, ("data", "fsdp")))  # the row / sequence axis of every field
        self.batch_shardings = packing.Batch(*([rows] * len(dataclasses.fields(packing.Batch))))
        self._update = jax.jit(self._update_fn,
                               in_shardings=(self.state_shardings, self.batch_shardings,
                                             self.param_shardings if self.uses_reference else None),
                               out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)

    # ---- state ---------------------------------------------------------------------------------
    @property
    def uses_reference(self) -> bool:
        return self.exp.objective.kl_coef > 0

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state on this mesh: the target of a checkpoint restore."""
        return self._abstract

    def init_state(self, params, seed: int | None = None) -> TrainState:
        """A fresh state around params (any placement; they are resharded). With kl_coef > 0 these
        params also become the frozen reference model unless `set_reference` was called."""
        params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, self.cfg.param_dtype), params),
                                self.param_shardings)
        if self.uses_reference and self.reference is None:
            self.set_reference(params)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)
        seed = self.exp.seed if seed is None else seed
        return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), self.replicated),
                          jax.device_put(jax.random.PRNGKey(seed), self.replicated))

    def set_reference(self, params) -> None:
        """The frozen reference policy of the KL term (kept in the compute dtype; only when kl_coef > 0).
        After a restore, pass the run's initial params again."""
        if not self.uses_reference:
            raise ValueError("objective.kl_coef is 0: no reference model is kept")
        self.reference = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, self.cfg.dtype), params),
                                        self.param_shardings)

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
        return self._update(state, batch, self.reference)

    def _logprobs(self, params, tokens_RL, segment_ids_RL, index_NT, entropy: bool):
        """Logprobs (and entropies) of the loss view's tokens under params, from the packed model view."""
        out = models.token_logprobs(params, self.cfg, tokens_RL, segment_ids=segment_ids_RL,
                                    return_entropy=entropy, chunk_size=self.chunk_size)
        return jax.tree.map(lambda x: _gather(x, index_NT), out)

    def _micro_loss(self, params, mb, old_logp_NT, reference, normalizers):
        obj = self.exp.objective
        entropy_NT = None
        if old_logp_NT is None and self.compute_entropy:
            logp_NT, entropy_NT = self._logprobs(params, mb.tokens, mb.segment_ids, mb.index, True)
            entropy_NT = jax.lax.stop_gradient(entropy_NT)
        else:
            logp_NT = self._logprobs(params, mb.tokens, mb.segment_ids, mb.index, False)
        if old_logp_NT is None:  # one optimizer step per batch: the sampling policy is the current one
            old_logp_NT = jax.lax.stop_gradient(logp_NT)
        ref_logp_NT = None
        if reference is not None:
            ref_logp_NT = jax.lax.stop_gradient(
                self._logprobs(reference, mb.tokens, mb.segment_ids, mb.index, False))
        hyper = {k: getattr(obj, k) for k in ("eps_low", "eps_high") if getattr(obj, k) is not None}
        truncated = None if obj.overlong == "none" else mb.truncated
        loss, metrics = policy_loss(
            obj.name, logp_NT, old_logp_NT, mb.advantages, mb.mask, kl_coef=obj.kl_coef, ref_logp=ref_logp_NT,
            truncated=truncated, overlong="zero_advantage" if truncated is None else obj.overlong,
            rollout_logp=mb.rollout_logp, tis_cap=obj.tis_cap, entropy=entropy_NT, **normalizers, **hyper)
        metrics["sequences"] = mb.mask.any(axis=-1).sum()
        return loss, metrics

    def _update_fn(self, state: TrainState, batch: packing.Batch, reference):
        mini, micro = batch.tokens.shape[:2]
        obj = self.exp.objective
        flat = jax.tree.map(lambda x: x.reshape((mini * micro,) + x.shape[2:]), batch)
        if mini > 1:
            def old_step(_, mb):
                return None, self._logprobs(state.params, mb.tokens, mb.segment_ids, mb.index, False)

            _, old_logp = jax.lax.scan(old_step, None, flat)
            old_logp = jax.lax.stop_gradient(old_logp.reshape(batch.index.shape))
        else:
            old_logp = None

        def mini_step(carry, xs):
            params, opt_state = carry
            mb_all, old_all = xs
            Tr = mb_all.mask.shape[-1]
            truncated = None if obj.overlong == "none" else mb_all.truncated.reshape(-1)
            normalizers = loss_normalizers(mb_all.mask.reshape(-1, Tr), truncated,
                                           "zero_advantage" if truncated is None else obj.overlong)

            def micro_step(grads, xs):
                mb, old = xs
                (loss, metrics), g = jax.value_and_grad(self._micro_loss, has_aux=True)(
                    params, mb, old, reference, normalizers)
                grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
                return jax.lax.with_sharding_constraint(grads, self.param_shardings), dict(metrics, loss=loss)

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            zeros = jax.lax.with_sharding_constraint(zeros, self.param_shardings)
            grads, metrics = jax.lax.scan(micro_step, zeros, (mb_all, old_all))
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                           lr=opt_state[1].hyperparams["learning_rate"])
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(mini_step, (state.params, state.opt_state),
                                                    (batch, old_logp))
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, _combine_metrics(metrics)

    # ---- export --------------------------------------------------------------------------------
    def export(self, state: TrainState, export_dir, version: int, tokenizer_from=None) -> Path:
        """Write the current params as a Hugging Face folder export_dir/step_{version:06d} for the
        rollout servers, in the compute dtype. Written into a temporary folder, marked complete with
        EXPORT_MARKER, then renamed, so a reader never sees a half-written version. Tokenizer files
        are copied from `tokenizer_from` (default: exp.model.path) when present."""
        export_dir = Path(export_dir)
        final = export_dir / f"step_{version:06d}"
        tmp = export_dir / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(self.cfg.dtype), p))(state.params)
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
    out["loss"] = m["loss"].sum(axis=1).mean()
    out["grad_norm"], out["lr"] = m["grad_norm"].mean(), m["lr"][-1]
    return out
