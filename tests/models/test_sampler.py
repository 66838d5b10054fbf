"""models.sampler against transformers' greedy generate and against full-sequence forward logprobs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import models
from models.sampler import SamplingParams, decode, generate, generate_batch

LENGTHS = (5, 12, 1, 9)
NEW = 16


def _prompts(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 256, n).tolist() for n in lengths]


def _load(hf_model, variant="qwen3_yarn"):
    # A larger init than transformers' default makes the random model's distributions less flat.
    folder, torch_model = hf_model(variant, initializer_range=0.2)
    cfg, params = models.load_hf(folder)
    return cfg, params, torch_model


def _logprobs_ref(params, cfg, prompts, completions, temperature=1.0):
    """log_softmax(forward(prompt + completion) / T) at each new token, from one left-padded batch."""
    seqs = [p + c.token_ids for p, c in zip(prompts, completions)]
    T = 32  # one shape for every test: one compilation
    tokens = np.array([[0] * (T - len(s)) + s for s in seqs])
    mask = np.array([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    logp = jax.nn.log_softmax(models.forward(params, cfg, tokens, mask) / temperature, axis=-1)
    return [np.asarray(logp[i, T - len(c.token_ids) - 1:T - 1]) for i, c in enumerate(completions)]


@pytest.mark.parametrize("variant", ["qwen2_untied", "qwen3_yarn"])
def test_greedy_matches_transformers(hf_model, variant):
    cfg, params, torch_model = _load(hf_model, variant)
    prompts = _prompts()
    out = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.0)

    P = max(LENGTHS)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    torch_model.generation_config.eos_token_id = None  # never stop early: compare all NEW tokens
    with torch.no_grad():
        ref = torch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                   pad_token_id=0)[:, P:].tolist()
    for c, r in zip(out, ref):
        assert c.token_ids == r
        assert c.finish_reason == "length" and c.matched_stop is None and len(c.logprobs) == NEW

    for c, logp in zip(out, _logprobs_ref(params, cfg, prompts, out)):
        np.testing.assert_allclose(c.logprobs, logp[np.arange(NEW), c.token_ids], atol=2e-5)
        assert (np.argmax(logp, axis=-1) == c.token_ids).all()


def test_sampled_logprobs_are_before_filtering(hf_model):
    """At T=0.7 with top-k/top-p on, logprobs are log_softmax(logits / 0.7) of the unfiltered logits."""
    cfg, params, _ = _load(hf_model)
    prompts = _prompts(1)
    out = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.7, top_k=20, top_p=0.9, seed=3)
    for c, logp in zip(out, _logprobs_ref(params, cfg, prompts, out, temperature=0.7)):
        chosen = logp[np.arange(NEW), c.token_ids]
        np.testing.assert_allclose(c.logprobs, chosen, atol=2e-5)
        rank = (logp > chosen[:, None]).sum(axis=-1)
        assert (rank < 20).all()
        # Nucleus: the mass strictly above each chosen token is at most top_p.
        above = np.where(logp > chosen[:, None], np.exp(logp), 0.0).sum(axis=-1)
        assert (above <= 0.9 + 1e-5).all()


def test_top_k_2_only_draws_the_two_most_likely(hf_model):
    cfg, params, _ = _load(hf_model)
    prompts = _prompts(2)
    out = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=1.5, top_k=2, seed=0)
    ranks = []
    for c, logp in zip(out, _logprobs_ref(params, cfg, prompts, out, temperature=1.5)):
        chosen = logp[np.arange(NEW), c.token_ids]
        ranks += (logp > chosen[:, None]).sum(axis=-1).tolist()
    assert set(ranks) == {0, 1}  # only the top two, and both of them appear


@pytest.mark.parametrize("top_k, top_p", [(-1, 1.0), (3, 1.0), (-1, 0.6)])
def test_draws_follow_the_filtered_distribution(top_k, top_p):
    """20,000 rows of one distribution at T = 0.7: draws match softmax(logits / T) renormalised over the
    tokens the filters keep (chi-square), and filtered-out tokens are never drawn."""
    from scipy.stats import chisquare
    from models.sampler import sample_tokens

    R, logits = 20_000, np.array([2.0, 1.5, 1.0, 0.2, -1.0, -3.0], np.float32)
    row = lambda x, dtype: np.full(R, x, dtype)
    keys = jax.vmap(jax.random.key)(np.arange(R))
    token, _ = sample_tokens(np.tile(logits, (R, 1)), keys, row(0.7, np.float32), row(top_p, np.float32),
                             row(top_k, np.int32), row(0.0, np.float32), sample=True, filtering=(top_k, top_p) != (-1, 1.0))
    p = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum()
    keep = np.ones(len(p), bool) if top_k < 0 else np.arange(len(p)) < top_k
    keep &= np.concatenate([[0.0], np.cumsum(p)[:-1]]) <= top_p  # SGLang's nucleus: mass above <= top_p
    counts = np.bincount(np.asarray(token), minlength=len(p))
    assert counts[~keep].sum() == 0
    expected = R * p[keep] / p[keep].sum()
    assert chisquare(counts[keep], expected).pvalue > 1e-3


def test_the_inverse_cdf_never_draws_a_filtered_token():
    """A float32 cumsum over 152K tokens is not monotone on CPU: counting CDF values <= u gave
    zero-probability (filtered) tokens a share of the draws. Swept over u, none is drawn, and the draws
    still follow the probabilities."""
    from models.sampler import inverse_cdf
    rng = np.random.default_rng(0)
    probs = rng.random(151_936).astype(np.float32)
    probs[::2] = 0.0
    probs /= probs.sum()
    u = np.linspace(0, 1, 256, endpoint=False, dtype=np.float32)
    drawn = np.asarray(jax.jit(inverse_cdf)(np.broadcast_to(probs, (len(u), len(probs))), u))
    assert (drawn % 2 == 1).all() and (np.diff(drawn) >= 0).all()
    halves = np.searchsorted(np.cumsum(probs), 0.5)  # the draws below u = 0.5 are the tokens below the median
    assert abs(int((drawn <= halves).sum()) - 128) <= 1
    # u aimed inside the steps the float32 cumsum takes at zero-probability tokens
    cdf = np.asarray(jax.jit(jnp.cumsum)(probs))
    steps = np.flatnonzero(cdf[2::2] != cdf[1:-1:2]) * 2 + 2
    aimed = ((cdf[steps - 1] + cdf[steps]) / 2 / cdf[-1])[:64].astype(np.float32)
    drawn = np.asarray(jax.jit(inverse_cdf)(np.broadcast_to(probs, (len(aimed), len(probs))), aimed))
    assert (drawn % 2 == 1).all()


def test_filters_keep_tokens_by_rank_when_logits_tie():
    """Filtering by value kept every token tied at the cut: top_k=1 over [1, 1, 1, 0] drew three tokens."""
    from models.sampler import _filter
    logits = np.array([[1.0, 1.0, 1.0, 0.0], np.log([0.4, 0.3, 0.3, 1e-12])], np.float32)
    kept = np.isfinite(np.asarray(_filter(logits, np.array([1, -1]), np.array([1.0, 0.5], np.float32),
                                          np.zeros(2, np.float32))))
    assert kept.tolist() == [[True, False, False, False], [True, True, False, False]]


def test_stop_token_ends_the_row(hf_model):
    cfg, params, _ = _load(hf_model)
    prompts = _prompts()
    greedy = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.0)
    stop = greedy[0].token_ids[5]
    out = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.0, stop_token_ids=[7, stop])
    for g, c in zip(greedy, out):
        hits = [i for i, t in enumerate(g.token_ids) if t in (7, stop)]
        if hits:
            end = hits[0] + 1
            assert (c.finish_reason, c.matched_stop) == ("stop", g.token_ids[hits[0]])
        else:
            end = NEW
            assert (c.finish_reason, c.matched_stop) == ("length", None)
        assert c.token_ids == g.token_ids[:end]
        np.testing.assert_allclose(c.logprobs, g.logprobs[:end], atol=1e-6)
    assert out[0].finish_reason == "stop" and len(out[0].token_ids) <= 6


def test_seed_reproduces_and_rows_differ(hf_model):
    cfg, params, _ = _load(hf_model)
    prompts = [[1, 2, 3]] * 4
    kwargs = dict(max_new_tokens=NEW, temperature=1.0)
    a = generate(params, cfg, prompts, seed=1, **kwargs)
    b = generate(params, cfg, prompts, seed=1, **kwargs)
    c = generate(params, cfg, prompts, seed=2, **kwargs)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    assert len({tuple(x.token_ids) for x in a}) == 4  # one prompt repeated still gets different samples


@pytest.mark.parametrize("filters", [dict(top_k=1), dict(top_p=1e-6)])
def test_degenerate_filters_equal_greedy(hf_model, filters):
    cfg, params, _ = _load(hf_model)
    prompts = _prompts()
    greedy = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.0)
    out = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=1.0, seed=5, **filters)
    assert [c.token_ids for c in out] == [g.token_ids for g in greedy]


def test_per_request_params_and_shape_buckets(hf_model):
    cfg, params, _ = _load(hf_model)
    prompts = _prompts()
    greedy = generate(params, cfg, prompts, max_new_tokens=NEW, temperature=0.0)
    compiled = decode._cache_size()
    sampling = [SamplingParams(max_new_tokens=3, temperature=0.0),
                SamplingParams(max_new_tokens=NEW, temperature=0.0, stop_token_ids=(greedy[1].token_ids[2],)),
                SamplingParams(max_new_tokens=NEW, temperature=0.0),
                SamplingParams(max_new_tokens=9, temperature=0.0)]
    out = generate_batch(params, cfg, [p + [4] for p in prompts], sampling)  # longer prompts, same bucket
    assert decode._cache_size() == compiled  # same buckets: no new compilation
    again = generate_batch(params, cfg, prompts, sampling)
    assert again[0].token_ids == greedy[0].token_ids[:3] and again[0].finish_reason == "length"
    assert again[1].finish_reason == "stop" and len(again[1].token_ids) <= 3
    assert again[2].token_ids == greedy[2].token_ids
    assert again[3].token_ids == greedy[3].token_ids[:9]
    assert [len(c.token_ids) for c in out] == [3, len(out[1].token_ids), NEW, 9]


def test_rejects_bad_prompts(hf_model):
    cfg, params, _ = _load(hf_model)
    with pytest.raises(ValueError, match="empty"):
        generate(params, cfg, [[1], []])
    with pytest.raises(ValueError, match="outside"):
        generate(params, cfg, [[cfg.vocab_size]])
