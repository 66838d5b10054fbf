"""A jitted training step over an 8-device mesh (data x fsdp x tensor) equals the single-device step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
from models.sharding import batch_sharding, unsplit_weights
from models.weights import abstract_params


def test_sharded_training_step_matches_single_device():
    cfg = models.ModelConfig(arch="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False)
    params = models.init_params(cfg, jax.random.key(0))
    # The abstract pytree (for checkpoint restores and eval_shape) describes exactly these arrays.
    abstract = abstract_params(cfg)
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    assert all(a.shape == p.shape and a.dtype == p.dtype
               for a, p in zip(jax.tree.leaves(abstract), jax.tree.leaves(params)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (8, 16)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[::2, :5] = 0  # left padding on half the rows
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))

    def loss_fn(p, tokens, mask):
        logp = models.token_logprobs(p, cfg, tokens, mask)
        valid = (mask[:, :-1] * mask[:, 1:]).astype(jnp.float32)
        return -(logp * valid).sum() / valid.sum()

    def step(p, state, tokens, mask):
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens, mask)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    p1, _, loss1 = jax.jit(step)(params, opt.init(params), tokens, mask)

    mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = models.param_shardings(cfg, mesh)
    sharded = jax.device_put(params, shardings)
    state = jax.jit(opt.init)(sharded)  # optimizer state inherits the parameter shardings
    batch = batch_sharding(mesh)
    p8, state8, loss8 = jax.jit(step, out_shardings=(shardings, None, None))(
        sharded, state, jax.device_put(tokens, batch), jax.device_put(mask, batch))

    assert p8["layers"]["gate"].sharding.spec == shardings["layers"]["gate"].spec
    assert len(p8["layers"]["gate"].sharding.device_set) == 8
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(p1["layers"]["gate"]), np.asarray(params["layers"]["gate"]))


def test_weights_a_mesh_axis_cannot_split_are_named():
    """fsdp=3 or 24 does not divide hidden 5120: every 14B weight stayed whole on every device, silently."""
    from jax.sharding import AbstractMesh
    qwen3_14b = models.ModelConfig(arch="qwen3", vocab_size=151936, hidden_size=5120, intermediate_size=17408,
                                   num_layers=40, num_heads=40, num_kv_heads=8, head_dim=128)

    def mesh(data, fsdp, tensor):
        return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))
    assert unsplit_weights(qwen3_14b, mesh(1, 8, 1)) == [] == unsplit_weights(qwen3_14b, mesh(2, 4, 8))
    assert "layers.q: embed 5120 over fsdp=3" in unsplit_weights(qwen3_14b, mesh(1, 3, 1))
    # 40 heads over tensor=16: q and o whole; 8 kv heads over 16 are copies by design, not named
    assert unsplit_weights(qwen3_14b, mesh(1, 1, 16)) == ["layers.q: heads 40 over tensor=16",
                                                          "layers.o: heads 40 over tensor=16"]
