"""What the trainer and checkpoint tests share: a tiny model, an experiment, a batch of rollouts."""
import dataclasses
import functools

import jax
import numpy as np

import models
from models.weights import full_shape, map_weights
from rl import packing
from rl.trainer import Trainer
from rl.experiment import BatchSection, Experiment, ObjectiveSection, OptimizerSection

CFG = models.ModelConfig(arch="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False, remat="none")
# lr large enough that one step moves every weight visibly; warmup so lr changes from step to step.
EXP = Experiment(objective=ObjectiveSection(name="dapo", tis_cap=2.0),
                 batch=BatchSection(pack=False),
                 optimizer=OptimizerSection(lr=1e-2, warmup_steps=2, clip_norm=1e3))


def experiment(objective=None, **batch):
    exp = EXP
    if objective is not None:
        exp = exp.replace(objective=objective)
    return exp.replace(batch=dataclasses.replace(exp.batch, **batch))


# Half the compile time of the update is LLVM optimising tiny kernels; the tests do not need it.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def trainer(exp, mesh, cfg=CFG):
    return Trainer(exp, cfg, mesh, compiler_options=FAST_COMPILE)


def single_device_mesh():
    return models.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def mesh_2x2x2():
    return models.make_mesh(data=2, fsdp=2, tensor=2)


@functools.cache
def _initial_params():
    # numpy, not models.init_params: its eager per-weight init compiles one program per weight.
    rng = np.random.default_rng(0)
    return map_weights(CFG, lambda w: (np.ones if w.init == "ones" else np.zeros)(full_shape(w, CFG), np.float32)
                       + 0.3 * rng.standard_normal(full_shape(w, CFG)).astype(np.float32))


def initial_params():
    return jax.tree.map(np.copy, _initial_params())


def samples(n=16, seed=0):
    """n rollouts: prompts 2-6 tokens, responses 1-14 tokens, mixed advantages, some truncated, rollout
    logprobs near (not at) the model's."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(1, CFG.vocab_size, rng.integers(2, 7))
        response = rng.integers(1, CFG.vocab_size, rng.integers(1, 15))
        logprobs = -np.log(CFG.vocab_size) + 0.3 * rng.standard_normal(len(response))
        out.append(packing.Sample(prompt, response, logprobs, float(rng.standard_normal()), bool(i % 5 == 4)))
    return out


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))
