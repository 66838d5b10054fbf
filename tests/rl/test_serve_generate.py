"""/generate of the embedded server over real HTTP: SGLang's answer fields, greedy equal to models.generate,
logprobs equal to models.token_logprobs (greedy and sampled), n groups, batches, stops, streaming."""
import json

import numpy as np
import pytest

import models

PROMPTS = [[5, 9, 14, 3], [7, 100, 23, 54, 8, 9, 11], [42]]
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def triples(answer):
    return answer["meta_info"]["output_token_logprobs"]


def test_greedy_batch_equals_models_generate_in_order(served):
    out = served.generate({"input_ids": PROMPTS, "sampling_params": {"max_new_tokens": 12, **GREEDY},
                           "return_logprob": True})
    ref = models.generate(served.params, served.cfg, PROMPTS, max_new_tokens=12, temperature=0.0)
    assert isinstance(out, list) and len(out) == len(PROMPTS)
    for answer, c, prompt in zip(out, ref, PROMPTS):
        meta = answer["meta_info"]
        assert answer["output_ids"] == c.token_ids
        assert [t for _, t, _ in triples(answer)] == c.token_ids
        np.testing.assert_allclose([lp for lp, _, _ in triples(answer)], c.logprobs, atol=2e-5)
        np.testing.assert_allclose([lp for lp, _, _ in triples(answer)],
                                   served.reference_logprobs(prompt, c.token_ids, 1.0), atol=2e-5)
        assert meta["finish_reason"] == {"type": "length", "length": 12}
        assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (len(prompt), 12, 0)
        assert meta["weight_version"] == "default" and meta["e2e_latency"] > 0 and meta["id"]
        assert answer["text"] == served.tokenizer.decode(c.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("temperature,filters", [(0.7, {"top_p": 0.9}), (1.3, {"top_k": 20, "min_p": 0.01})])
def test_sampled_logprobs_are_token_logprobs_before_filtering(served, temperature, filters):
    out = served.generate({"input_ids": PROMPTS[1], "return_logprob": True,
                           "sampling_params": {"max_new_tokens": 10, "temperature": temperature, "n": 3,
                                               "sampling_seed": 11, **GREEDY, "temperature": temperature,
                                               **filters}})
    assert len(out) == 3
    for answer in out:
        ids = answer["output_ids"]
        ref = served.reference_logprobs(PROMPTS[1], ids, temperature)
        np.testing.assert_allclose([lp for lp, _, _ in triples(answer)], ref, atol=2e-5)
    # the filters held: every drawn token lies inside top-k / the nucleus of the unfiltered distribution
    for answer in out:
        ids = answer["output_ids"]
        z = served.reference_logits(PROMPTS[1], ids) / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        chosen = p[np.arange(len(ids)), ids][:, None]
        if "top_k" in filters:
            assert ((p > chosen).sum(axis=1) < filters["top_k"]).all()
            assert (chosen[:, 0] >= filters["min_p"] * p.max(axis=1)).all()
        else:  # the mass strictly above each drawn token is within top_p
            assert (np.where(p > chosen, p, 0).sum(axis=1) <= filters["top_p"] + 1e-5).all()


def test_n_samples_differ_and_a_seed_reproduces_them(served):
    body = {"input_ids": PROMPTS[0], "sampling_params": {"n": 4, "max_new_tokens": 6, "temperature": 1.0,
                                                         "sampling_seed": 3, "ignore_eos": True}}
    a, b = served.generate(body), served.generate(body)
    assert len(a) == 4 and [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
    assert len({tuple(x["output_ids"]) for x in a}) == 4
    assert len({x["meta_info"]["id"] for x in a}) == 4
    body["sampling_params"]["sampling_seed"] = 4
    assert [x["output_ids"] for x in served.generate(body)] != [x["output_ids"] for x in a]


def test_batch_with_n_answers_prompt_major(served):
    out = served.generate({"input_ids": PROMPTS[:2], "sampling_params": {"n": 2, "max_new_tokens": 3, **GREEDY}})
    assert [x["meta_info"]["prompt_tokens"] for x in out] == [4, 4, 7, 7]
    single = served.generate({"input_ids": PROMPTS[1], "sampling_params": {"max_new_tokens": 3, **GREEDY}})
    assert isinstance(single, dict) and out[2]["output_ids"] == single["output_ids"]


def test_stop_token_ends_it_with_the_token_in_the_triples(served):
    greedy = served.generate({"input_ids": PROMPTS[1], "sampling_params": {"max_new_tokens": 8, **GREEDY}})
    ids = greedy["output_ids"]
    stop = ids[3]
    end = ids.index(stop) + 1
    for trim in (False, True):
        out = served.generate({"input_ids": PROMPTS[1], "return_logprob": True,
                               "sampling_params": {"max_new_tokens": 8, **GREEDY, "stop_token_ids": [stop],
                                                   "no_stop_trim": trim}})
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert out["output_ids"] == ids[:end] and [t for _, t, _ in triples(out)] == ids[:end]
        kept = ids[:end] if trim else ids[:end - 1]
        assert out["text"] == served.tokenizer.decode(kept, skip_special_tokens=True)


def test_stop_string_is_trimmed_unless_no_stop_trim(served):
    greedy = served.generate({"input_ids": PROMPTS[2], "sampling_params": {"max_new_tokens": 10, **GREEDY}})
    pieces = [served.tokenizer.decode([t]) for t in greedy["output_ids"]]
    k = next(i for i, p in enumerate(pieces) if i >= 2 and p.strip() and p not in "".join(pieces[:i]))
    stop = pieces[k].strip()[:2]
    body = {"input_ids": PROMPTS[2], "sampling_params": {"max_new_tokens": 10, **GREEDY, "stop": [stop]}}
    out = served.generate(body)
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == greedy["output_ids"][:len(out["output_ids"])] and len(out["output_ids"]) <= k + 1
    full = served.tokenizer.decode(out["output_ids"], skip_special_tokens=True)
    assert out["text"] == full[:full.index(stop)] and stop in full
    body["sampling_params"]["no_stop_trim"] = True
    assert served.generate(body)["text"] == full


def test_stop_string_longer_than_the_decoded_tail_matches(served):
    """Only the last 64 output tokens were decoded to look for a stop string, so a longer one never matched."""
    greedy = served.generate({"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 160, **GREEDY}})
    stop = served.tokenizer.decode(greedy["output_ids"][40:140])
    assert len(served.tokenizer.encode(stop)) > 64
    out = served.generate({"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 160, **GREEDY,
                                                                        "stop": [stop]}})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == greedy["output_ids"][:len(out["output_ids"])] and len(out["output_ids"]) <= 140


def test_top_logprobs_text_and_input_logprobs(served):
    out = served.generate({"input_ids": PROMPTS[1], "return_logprob": True, "top_logprobs_num": 3,
                           "return_text_in_logprobs": True, "logprob_start_len": 0,
                           "sampling_params": {"max_new_tokens": 4, **GREEDY}})
    meta = out["meta_info"]
    for (lp, t, text), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert text == served.tokenizer.decode([t]) and len(top) == 3
        assert top[0][1] == t and top[0][0] == pytest.approx(lp, abs=1e-6)  # greedy: the top token
        assert top[0][0] >= top[1][0] >= top[2][0]
    inputs = meta["input_token_logprobs"]
    assert [t for _, t, _ in inputs] == PROMPTS[1] and inputs[0][0] is None
    np.testing.assert_allclose([lp for lp, _, _ in inputs[1:]],
                               served.reference_logprobs(PROMPTS[1][:1], PROMPTS[1][1:], 1.0), atol=2e-5)
    tops = meta["input_top_logprobs"]
    assert len(tops) == len(inputs) and tops[0] is None
    logits = served.reference_logits(PROMPTS[1][:1], PROMPTS[1][1:])
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    for top, row in zip(tops[1:], logp):
        assert [t for _, t, _ in top] == np.argsort(-row)[:3].tolist()
        np.testing.assert_allclose([lp for lp, _, _ in top], np.sort(row)[::-1][:3], atol=2e-5)
        assert all(text == served.tokenizer.decode([t]) for _, t, text in top)


def test_input_top_logprobs_from_logprob_start_len(served):
    body = {"input_ids": PROMPTS[1], "return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 3,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.5}}
    meta = served.generate(body)["meta_info"]
    inputs, tops = meta["input_token_logprobs"], meta["input_top_logprobs"]
    assert [t for _, t, _ in inputs] == PROMPTS[1][3:] and len(tops) == len(inputs)
    for (lp, t, _), top in zip(inputs, tops):  # at temperature 0.5, as the token logprobs
        assert len(top) == 2 and top[0][0] >= max(top[1][0], lp - 1e-6) and top[0][2] is None
    body["logprob_start_len"] = -1
    meta = served.generate(body)["meta_info"]
    assert meta["input_token_logprobs"] == [] and meta["input_top_logprobs"] == []


def test_input_logprobs_of_a_prompt_longer_than_one_top_logprobs_chunk(served):
    prompt = np.random.default_rng(0).integers(3, 100, 300).tolist()  # 299 positions: two chunks of 256
    body = {"input_ids": prompt, "return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 0,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.7}}
    meta = served.generate(body)["meta_info"]
    inputs, tops = meta["input_token_logprobs"][1:], meta["input_top_logprobs"][1:]
    np.testing.assert_allclose([lp for lp, _, _ in inputs], served.reference_logprobs(prompt[:1], prompt[1:], 0.7),
                               atol=2e-5)
    scaled = served.reference_logits(prompt[:1], prompt[1:]) / 0.7
    logp = scaled - scaled.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    assert [[t for _, t, _ in top] for top in tops] == np.argsort(-logp, axis=-1)[:, :2].tolist()
    np.testing.assert_allclose([[lp for lp, _, _ in top] for top in tops], -np.sort(-logp, axis=-1)[:, :2], atol=2e-5)


def test_text_input_zero_tokens_and_streaming(served):
    text = "def add(a, b):"
    out = served.generate({"text": text, "sampling_params": {"max_new_tokens": 0}})
    assert out["output_ids"] == [] and out["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert out["meta_info"]["prompt_tokens"] == len(served.tokenizer.encode(text))

    body = {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 5, **GREEDY}, "stream": True}
    with served.http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    lengths = [len(c["output_ids"]) for c in chunks]
    assert lengths == sorted(set(lengths)) and lengths[-1] == 5  # each chunk brings new tokens
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    final = served.generate({k: v for k, v in body.items() if k != "stream"})
    assert chunks[-1]["output_ids"] == final["output_ids"] and chunks[-1]["text"] == final["text"]
