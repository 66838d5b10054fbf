"""The `openai` package and Atropos's SGLang handler (atroposlib 0.4.0) against the embedded server:
/v1 completions and chat with logprobs, n, stop and streaming; a max_tokens=1 probe stays cheap while
every decode slot is busy."""
import asyncio
import threading
import time

import numpy as np
import openai
import pytest

from tests.rl.serve_helpers import API_KEY, SLOTS

PROMPT = [7, 100, 23, 54, 8, 9, 11]


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_and_completions_match_generate(served, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    native = served.generate({"input_ids": PROMPT, "return_logprob": True,
                              "sampling_params": {"max_new_tokens": 6, "temperature": 0.0, "ignore_eos": True}})
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0.0, logprobs=2,
                                    extra_body={"ignore_eos": True})
    choice = out.choices[0]
    assert choice.finish_reason == "length" and out.usage.prompt_tokens == len(PROMPT)
    assert out.usage.completion_tokens == 6 and choice.text == native["text"]
    np.testing.assert_allclose(choice.logprobs.token_logprobs,
                               [lp for lp, _, _ in native["meta_info"]["output_token_logprobs"]], atol=1e-6)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.tokens == [served.tokenizer.decode([t]) for t in native["output_ids"]]


def test_completions_n_seed_and_stop(served, client):
    kwargs = dict(model="tiny", prompt="def add(a, b):", max_tokens=8, temperature=1.0, n=3, seed=5)
    a, b = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2] and [c.text for c in a.choices] == [c.text for c in b.choices]
    first = a.choices[0].text
    stop = next(ch for ch in first[1:] if ch.strip())
    stopped = client.completions.create(**{**kwargs, "n": 1, "stop": [stop]}).choices[0]
    assert stopped.finish_reason == "stop" and stop not in stopped.text and first.startswith(stopped.text)


def test_chat_uses_the_template_with_logprobs_n_and_streaming(served, client):
    messages = [{"role": "user", "content": "Write a function."}]
    template = served.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    template = template["input_ids"] if hasattr(template, "keys") else template
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0.0, n=2,
                                         logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    assert out.usage.prompt_tokens == len(template) and len(out.choices) == 2
    native = served.generate({"input_ids": list(template), "return_logprob": True,
                              "sampling_params": {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}})
    for choice in out.choices:
        assert choice.message.role == "assistant" and choice.message.content == native["text"]
        # n=2 decodes two rows, the native call one: the dots sum in a different order (float32 rounding)
        np.testing.assert_allclose([t.logprob for t in choice.logprobs.content],
                                   [lp for lp, _, _ in native["meta_info"]["output_token_logprobs"]], atol=2e-5)
        assert all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0.0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == native["text"]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_without_a_token_limit_chat_and_null_max_new_tokens_run_to_the_context(served, client):
    """SGLang leaves max_new_tokens None (up to the context) for a chat request without max_tokens and
    for an explicit null; the server gave 16 and 128 tokens."""
    context = served.cfg.max_position_embeddings
    ids = [7] * (context - 6)
    out = served.generate({"input_ids": ids, "sampling_params": {"max_new_tokens": None, "ignore_eos": True}})
    assert out["meta_info"]["completion_tokens"] == 6 and out["meta_info"]["finish_reason"]["type"] == "length"
    words = " ".join(["add"] * context)
    n = len(served.tokenizer.apply_chat_template([{"role": "user", "content": words}], tokenize=True,
                                                 add_generation_prompt=True)["input_ids"])
    cut = words[:len(words) * (context - 40) // n]  # about 40 tokens short of the context
    r = served.post("/v1/chat/completions", {"messages": [{"role": "user", "content": cut}], "ignore_eos": True})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == context and usage["completion_tokens"] > 16


def test_streamed_chunks_carry_logprobs_and_usage(served, client):
    kwargs = dict(model="tiny", max_tokens=5, temperature=0.0, extra_body={"ignore_eos": True})
    whole = client.completions.create(prompt=PROMPT, logprobs=2, **kwargs).choices[0].logprobs
    chunks = list(client.completions.create(prompt=PROMPT, logprobs=2, stream=True,
                                            stream_options={"include_usage": True}, **kwargs))
    parts = [c.choices[0].logprobs for c in chunks if c.choices]
    assert sum((p.tokens for p in parts), []) == whole.tokens
    assert sum((p.text_offset for p in parts), []) == whole.text_offset
    np.testing.assert_allclose(sum((p.token_logprobs for p in parts), []), whole.token_logprobs, atol=1e-6)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == len(PROMPT)
    messages = [{"role": "user", "content": "hi"}]
    chat = list(client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2, stream=True,
                                               **kwargs))
    assert sum(len(c.choices[0].logprobs.content) for c in chat) == 5
    assert all(len(t.top_logprobs) == 2 for c in chat for t in c.choices[0].logprobs.content)


def test_probe_is_cheap_while_every_slot_is_busy(served, client):
    probes = (lambda: client.completions.create(model="tiny", prompt="hi", max_tokens=1),
              lambda: client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=1))
    for probe in probes:  # Atropos probes from the start: their programs are compiled before the load
        probe()
    box = {}
    group = {"input_ids": PROMPT, "rid": "busy",
             "sampling_params": {"n": SLOTS + 2, "max_new_tokens": 1000, "temperature": 1.0, "ignore_eos": True}}
    thread = threading.Thread(target=lambda: box.setdefault("answer", served.generate(group)), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while served.http.get("/get_server_info").json()["internal_states"][0]["pending_requests"] < SLOTS + 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for probe in probes:
            assert probe().usage.completion_tokens == 1
            # answered while the group runs: it did not wait for a slot (one frees after 1000 steps)
            assert thread.is_alive()
    finally:
        served.post("/abort_request", {"rid": "busy"})
        thread.join(60)
    assert len(box["answer"]) == SLOTS + 2


def test_atropos_sglang_handler(served):
    from atroposlib.envs.server_handling.server_baseline import APIServerConfig
    from atroposlib.envs.server_handling.sglang_server import SGLangServer

    async def run():
        server = SGLangServer(APIServerConfig(base_url=f"{served.url}/v1", api_key=API_KEY, model_name="tiny",
                                              tokenizer_name=str(served.model_dir), server_type="sglang",
                                              timeout=60))
        prompt, outputs, logprobs, finishes = await server.tokens_and_logprobs_completion(
            input_ids=PROMPT, n=3, max_tokens=6, temperature=1.0, top_p=1.0, stop_token_ids=[2])
        chat = await server.chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=2)
        await asyncio.sleep(1.5)  # its health probe (/v1/completions, max_tokens 1) ran in the background
        healthy = server.server_healthy
        server.check_task.cancel()
        return prompt, outputs, logprobs, finishes, chat, healthy

    prompt, outputs, logprobs, finishes, chat, healthy = asyncio.run(run())
    assert prompt == PROMPT and len(outputs) == len(logprobs) == len(finishes) == 3 and healthy
    for ids, lps, finish in zip(outputs, logprobs, finishes):
        np.testing.assert_allclose(lps, served.reference_logprobs(PROMPT, ids, 1.0), atol=2e-5)
        assert finish == ({"type": "stop", "matched": 2} if ids[-1] == 2 else {"type": "length", "length": 6})
    assert len(chat.choices) == 2
