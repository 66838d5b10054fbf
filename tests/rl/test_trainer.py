"""The jitted policy update: sharded equals single-device for every objective, micro-batch accumulation
equals one big batch, packed equals unpacked, mini-batches recompute old logprobs."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import models
from rl import packing
from rl.experiment import ObjectiveSection
from trainer_setup import CFG, assert_trees_close, experiment, initial_params, mesh_2x2x2, samples, single_device_mesh
from trainer_setup import trainer as make_trainer

OBJECTIVES = {
    "dapo": ObjectiveSection(name="dapo", tis_cap=2.0),
    # GRPO with the KL term (a reference model) and the overlong rows masked out of the denominators.
    "grpo": ObjectiveSection(name="grpo", kl_coef=0.04, overlong="mask"),
    "gspo": ObjectiveSection(name="gspo", eps_low=0.2, eps_high=0.28),  # wide enough that tokens move
    "gspo_plus": ObjectiveSection(name="gspo_plus", eps_low=0.2, eps_high=0.28, overlong="none"),
}
_RESULTS = {}


def run_update(objective: str, mesh_name: str = "single", **batch):
    """Two consecutive updates (so Adam's second step, the lr warmup and old != new all show); cached,
    since several tests compare against the same single-device run."""
    key = (objective, mesh_name, tuple(sorted(batch.items())))
    if key not in _RESULTS:
        mesh = mesh_2x2x2() if mesh_name == "2x2x2" else single_device_mesh()
        trainer = make_trainer(experiment(OBJECTIVES[objective], **batch), mesh)
        state = trainer.init_state(initial_params())
        data = trainer.pack(samples())
        state, first = trainer.update(state, data)
        state, second = trainer.update(state, data)
        _RESULTS[key] = (jax.device_get(state.params), jax.device_get(first), jax.device_get(second), state)
    return _RESULTS[key]


def assert_same_update(a, b, rtol=2e-5):
    params_a, first_a, second_a, _ = a
    params_b, first_b, second_b, _ = b
    for ma, mb in ((first_a, first_b), (second_a, second_b)):
        assert ma.keys() == mb.keys()
        for k in ma:
            np.testing.assert_allclose(ma[k], mb[k], rtol=rtol, atol=1e-6, err_msg=k)
    # Adam's update g / (sqrt(v) + 1e-8) turns float noise in a near-zero gradient into up to a few %
    # of a step (lr 1e-2), so params are held to 5% of one step; a wrong normaliser or a wrong
    # gradient shows in loss and grad_norm above, or as whole steps here.
    assert_trees_close(params_a, params_b, rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_sharded_update_equals_single_device(objective):
    # The 8-device run also accumulates 2 micro-batches (one compile fewer per objective than testing
    # them apart); test_micro_batches_equal_one_batch checks accumulation alone.
    single, sharded = run_update(objective), run_update(objective, "2x2x2", micro_batches=2)
    assert_same_update(single, sharded)
    state = sharded[3]
    gate = state.params["layers"]["gate"]
    assert len(gate.sharding.device_set) == 8 and gate.sharding.spec == P(None, "fsdp", "tensor")
    # Adam's moments follow the parameter shardings.
    mu = state.opt_state[1].inner_state[0].mu["layers"]["gate"]
    assert mu.sharding.spec == gate.sharding.spec
    params0 = initial_params()
    assert not np.allclose(single[0]["layers"]["gate"], params0["layers"]["gate"])
    first, second = single[1], single[2]
    assert first["lr"] == pytest.approx(5e-3) and second["lr"] == pytest.approx(1e-2)  # warmup 2 steps
    assert first["tokens"] > 0 and first["grad_norm"] > 0
    # The second update's policy is no longer the first's, yet old = current within an update.
    assert first["ratio_mean"] == pytest.approx(1.0) and second["ratio_mean"] == pytest.approx(1.0)
    assert first["mismatch_mean"] > 0.1  # the rollout logprobs are not the model's
    if objective == "grpo":
        assert first["kl_ref"] == pytest.approx(0.0, abs=1e-7) and second["kl_ref"] > 0


@pytest.mark.parametrize("objective", ["dapo", "grpo"])  # token mean and sequence mean
def test_micro_batches_equal_one_batch(objective):
    # 2 micro-batches: the sharded test above, for every objective.
    assert_same_update(run_update(objective), run_update(objective, micro_batches=4))


def test_packed_update_equals_unpacked():
    packed = run_update("gspo", pack=True, max_tokens_per_row=24)
    assert_same_update(run_update("gspo"), packed)


def test_packing_saves_padding():
    data = samples()
    unpacked = packing.pack(data, pack=False)
    packed = packing.pack(data, pack=True, row_len=24)
    assert packing.padding_fraction(packed) < packing.padding_fraction(unpacked)
    assert np.count_nonzero(packed.segment_ids) == np.count_nonzero(unpacked.segment_ids)
    assert packed.segment_ids.max() > 1  # several sequences share a row


def test_mini_batches_recompute_old_logprobs():
    _, first, _, _ = run_update("dapo", mini_batches=2)
    # The second optimizer step's policy differs from the one that computed old logprobs.
    assert first["approx_kl"] > 0 and first["ratio_mean"] != pytest.approx(1.0, abs=1e-7)
    assert first["lr"] == pytest.approx(1e-2)  # two optimizer steps: warmup done within the update
    single_step = run_update("dapo")[1]
    assert first["tokens"] == single_step["tokens"]
    # Entropies then come from the pre-update pass: the same policy as the one-step update measured.
    assert first["entropy"] == pytest.approx(single_step["entropy"], rel=1e-5)


def test_a_mini_batch_without_tokens_takes_no_optimizer_step():
    """Groups missing after the refill cap are empty rows at the end: with two mini-batches the second
    was all padding, and its AdamW step still moved the weights (momentum, weight decay) and halved
    the logged loss."""
    mesh = single_device_mesh()
    real = samples(8)
    empty = [packing.Sample([0], [], [], 0.0, False)] * 8
    two = make_trainer(experiment(OBJECTIVES["dapo"], mini_batches=2), mesh)
    state, metrics = two.update(two.init_state(initial_params()), two.pack(real + empty))
    one = make_trainer(experiment(OBJECTIVES["dapo"]), mesh)
    expected_state, expected = one.update(one.init_state(initial_params()), one.pack(real))
    assert_trees_close(state.params, expected_state.params, rtol=1e-5, atol=1e-6)
    assert int(state.opt_state[1].count) == 1
    for k in ("loss", "grad_norm", "tokens"):
        np.testing.assert_allclose(metrics[k], expected[k], rtol=1e-5, err_msg=k)


def test_rollout_logprobs_off_leaves_them_out():
    trainer = make_trainer(experiment(ObjectiveSection(name="dapo")).replace(rollout=dict(logprobs=False)),
                           single_device_mesh())
    _, metrics = trainer.update(trainer.init_state(initial_params()), trainer.pack(samples()))
    assert "mismatch_mean" not in metrics and "approx_kl" in metrics


def test_pack_rejects_bad_samples():
    good = samples(4)
    bad = [packing.Sample(s.prompt, s.response, s.logprobs[:-1], s.advantage) if i == 2 else s
           for i, s in enumerate(good)]
    with pytest.raises(ValueError, match="sample 2: .* logprobs for"):
        packing.pack(bad)
    with pytest.raises(ValueError, match="more than row_len=4"):
        packing.pack(good, row_len=4)


def test_pack_shapes_are_bucketed_and_shardable():
    assert [packing.bucket(n) for n in (1, 5, 9, 17, 100, 513)] == [1, 5, 10, 20, 112, 640]
    assert packing.bucket(5, multiple=4) == 8
    batch = packing.pack(samples(13), micro_batches=2, pack=False, shards=4)
    shape = batch.shape
    assert shape["rows"] % 4 == 0 and shape["sequences"] % 4 == 0 and shape["micro"] == 2
    # Every rollout's response lands exactly once, where the loss view points.
    gathered = []
    for m in range(2):
        flat = batch.tokens[0, m].reshape(-1)
        for n in range(shape["sequences"]):
            k = batch.mask[0, m, n].sum()
            if k:
                gathered.append(tuple(flat[batch.index[0, m, n, :k]]))
    assert sorted(gathered) == sorted(tuple(s.response) for s in samples(13))


def test_logprobs_are_taken_at_the_rollout_temperature():
    """The trainer took logprobs at temperature 1 whatever rollout.temperature was (DeepCoder samples at
    0.6): with the very weights that sampled, the train/rollout mismatch read 2.3 and the ratio was that
    of another policy."""
    params = initial_params()
    data = []
    for s in samples(8, seed=11):  # rollout logprobs exactly as the engine reports them at T = 0.6
        tokens = np.concatenate([s.prompt, s.response])[None]
        logp = np.asarray(models.token_logprobs(params, CFG, tokens, temperature=0.6))[0]
        data.append(packing.Sample(s.prompt, s.response, logp[len(s.prompt) - 1:len(tokens[0]) - 1], s.advantage,
                                   s.truncated))
    for temperature, matched in ((0.6, True), (1.0, False)):
        tr = make_trainer(experiment().replace(rollout=dict(temperature=temperature)), single_device_mesh())
        _, metrics = tr.update(tr.init_state(initial_params()), tr.pack(data))
        assert (float(metrics["mismatch_max"]) < 1e-4) is matched, (temperature, metrics["mismatch_max"])
