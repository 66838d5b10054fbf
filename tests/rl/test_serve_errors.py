"""Every malformed request to the embedded server gets HTTP 400 naming the field, never 422 or 500,
and the server keeps serving; the API key is enforced."""
import json

import pytest

MSG = [{"role": "user", "content": "x"}]
BAD = [
    ("/generate", {}, "input_ids"),
    ("/generate", {"input_ids": [1], "text": "a"}, "input_ids"),
    ("/generate", {"input_ids": "abc"}, "input_ids"),
    ("/generate", {"input_ids": []}, "input_ids"),
    ("/generate", {"input_ids": [1, 10**6]}, "input_ids"),
    ("/generate", {"input_ids": [1, -1]}, "input_ids"),
    ("/generate", {"input_ids": [[1], "x"]}, "input_ids"),
    ("/generate", {"input_ids": [1.5]}, "input_ids"),
    ("/generate", {"input_ids": [1] * 5000}, "input_ids"),  # longer than the context
    ("/generate", {"text": ""}, "text"),
    ("/generate", {"input_ids": [1] * 10, "sampling_params": {"max_new_tokens": 4090}}, "max_new_tokens"),
    ("/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ("/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": "5"}}, "max_new_tokens"),
    ("/generate", {"input_ids": [1], "sampling_params": {"temperature": -0.5}}, "temperature"),
    ("/generate", {"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p"),
    ("/generate", {"input_ids": [1], "sampling_params": {"top_k": 0}}, "top_k"),
    ("/generate", {"input_ids": [1], "sampling_params": {"min_p": 2}}, "min_p"),
    ("/generate", {"input_ids": [1], "sampling_params": {"n": 0}}, "n"),
    ("/generate", {"input_ids": [1], "sampling_params": {"stop": 5}}, "stop"),
    ("/generate", {"input_ids": [1], "sampling_params": {"stop_token_ids": [99999]}}, "stop_token_ids"),
    ("/generate", {"input_ids": [1], "sampling_params": {"ignore_eos": "no"}}, "ignore_eos"),
    ("/generate", {"input_ids": [1], "sampling_params": {"sampling_seed": "x"}}, "sampling_seed"),
    ("/generate", {"input_ids": [1], "sampling_params": {"bogus": 1}}, "bogus"),
    ("/generate", {"input_ids": [1], "sampling_params": {"frequency_penalty": 0.5}}, "frequency_penalty"),
    ("/generate", {"input_ids": [1], "sampling_params": [{}]}, "sampling_params"),
    ("/generate", {"input_ids": [[1], [2]], "sampling_params": [{}]}, "sampling_params"),
    ("/generate", {"input_ids": [1], "bogus_field": 1}, "bogus_field"),
    ("/generate", {"input_ids": [1], "image_data": "x.png"}, "image_data"),
    ("/generate", {"input_ids": [1], "return_logprob": "yes"}, "return_logprob"),
    ("/generate", {"input_ids": [1], "top_logprobs_num": 1000}, "top_logprobs_num"),
    ("/generate", {"input_ids": [1, 2], "logprob_start_len": 5}, "logprob_start_len"),
    ("/generate", {"input_ids": [1], "rid": 5}, "rid"),
    ("/generate", {"input_ids": [1], "stream": 1}, "stream"),
    ("/generate", [1, 2], "body"),
    ("/generate", {"input_ids": [1], "sampling_params": {"temperature": float("inf")}}, "temperature"),
    ("/generate", {"input_ids": [1], "sampling_params": {"top_p": float("nan")}}, "top_p"),
    ("/generate", {"input_ids": [1], "sampling_params": {"min_p": float("nan")}}, "min_p"),
    ("/generate", {"text": "\ud800abc"}, "text"),  # a lone surrogate: the tokenizer raised TypeError (500)
    ("/generate", {"input_ids": [[1], [2]], "rid": ["a", "a"]}, "rid"),
    ("/generate", {"input_ids": [[1], [2]], "rid": ["a"]}, "rid"),
    ("/generate", {"input_ids": [[1], [2]], "sampling_params": [{"n": 1}, {"n": 2}]}, "sampling_params"),
    ("/abort_request", {}, "rid"),
    ("/abort_request", {"rid": 5}, "rid"),
    ("/pause_generation", {"mode": "sideways"}, "mode"),
    ("/update_weights_from_disk", {}, "model_path"),
    ("/update_weights_from_disk", {"model_path": "/x", "weight_version": [1]}, "weight_version"),
    ("/v1/completions", {"model": "tiny"}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "best_of": 3}, "best_of"),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 99999]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "bogus": 1}, "bogus"),
    ("/v1/completions", {"model": "tiny", "prompt": "\udfff"}, "prompt"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"content": "x"}]}, "messages[0]"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "logprobs": True, "top_logprobs": 99},
     "top_logprobs"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "presence_penalty": 1.0}, "presence_penalty"),
    # Found 2026-12-05, each answered 500 or was taken silently:
    ("/generate", {"input_ids": [1], "sampling_params": {"temperature": 10**400}}, "temperature"),  # OverflowError
    ("/generate", {"input_ids": [1], "sampling_params": {"top_p": -10**400}}, "top_p"),
    ("/generate", {"input_ids": [1], "rid": "\ud800"}, "rid"),  # the answer echoing it could not be encoded
    ("/generate", {"input_ids": [1], "bogus\ud800": 1}, "bogus"),  # nor the error naming it
    ("/generate", {"input_ids": [1], "sampling_params": {"stop": ["ok", "\udc00"]}}, "sampling_params.stop[1]"),
    ("/generate", {"input_ids": [1], "priority": "high"}, "priority"),
    ("/generate", {"input_ids": [1], "modalities": 5}, "modalities"),
    ("/update_weights_from_disk", {"model_path": "/x", "weight_version": True}, "weight_version"),
    ("/update_weights_from_disk", {"model_path": "/x", "abort_all_requests": "yes"}, "abort_all_requests"),
    ("/v1/completions", {"model": "\ud800", "prompt": "hi"}, "model"),
    ("/v1/completions", {"model": 5, "prompt": "hi"}, "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "user": 5}, "user"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "rid": 5}, "rid"),  # "cmpl-" + 5
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "rid": ["x"]}, "rid"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "bogus", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "add_generation_prompt": "no"}, "add_generation_prompt"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_completion_tokens": -1}, "max_completion_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_completion_tokens": 2, "max_tokens": "x"},
     "max_tokens"),
]


@pytest.mark.parametrize("path,body,field", BAD, ids=[f"{p}:{f}:{i}" for i, (p, _, f) in enumerate(BAD)])
def test_bad_request_is_400_naming_the_field(served, path, body, field):
    # Python's json writes NaN and Infinity (as SGLang clients written in Python can send them).
    r = served.http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in error["message"] and field in (error["param"] or "")


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions", "/pause_generation",
                                  "/update_weights_from_disk", "/abort_request"])
@pytest.mark.parametrize("raw", [b"{bad json", b"\xff\xfe", b"[1, 2", b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json_is_400(served, path, raw):  # the last: nested too deep to parse
    r = served.http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "body" in r.json()["error"]["message"]


def test_server_survives_bad_input_and_checks_the_key(served):
    assert served.http.get("/generate").status_code == 405
    assert served.http.get("/health_generate").status_code == 200
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        r = served.http.post("/generate", json={"input_ids": [1]}, headers=headers)
        assert r.status_code == 401


def test_non_finite_numbers_are_written_as_null():
    """SGLang writes JSON with orjson, where NaN and infinities (logprobs of NaN weights) are null;
    json.dumps refused them and the answer was a 500."""
    from rl.rollout.server import dumps
    text = dumps({"meta_info": {"output_token_logprobs": [[float("nan"), 3, None], [-0.5, 4, "\u00e9"]]},
                  "x": (float("-inf"),)})
    assert json.loads(text) == {"meta_info": {"output_token_logprobs": [[None, 3, None], [-0.5, 4, "\u00e9"]]},
                                "x": [None]}


def test_top_k_beyond_the_vocabulary_means_every_token(served):
    """2**40 overflowed the engine's int32 and aborted every request in flight."""
    body = {"input_ids": [5, 9], "sampling_params": {"max_new_tokens": 6, "sampling_seed": 3, "ignore_eos": True}}
    plain = served.generate(body)
    huge = served.generate({**body, "sampling_params": {**body["sampling_params"], "top_k": 2 ** 40}})
    assert huge["output_ids"] == plain["output_ids"] and huge["meta_info"]["finish_reason"]["type"] == "length"


def test_sglang_request_ids_and_routes(served):
    body = {"input_ids": [[5, 9], [7]], "rid": "r", "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
    assert [a["meta_info"]["id"] for a in served.generate(body)] == ["r_0", "r_1"]  # GenerateReqInput._normalize_rid
    put = served.http.put("/generate", json={"input_ids": [5], "sampling_params": {"max_new_tokens": 1}})
    assert put.status_code == 200 and len(put.json()["output_ids"]) == 1
    assert served.http.get("/v1/models/tiny").json()["id"] == "tiny"
    missing = served.http.get("/v1/models/other")
    assert missing.status_code == 404 and "other" in missing.json()["error"]["message"]
    info = served.http.get("/get_server_info").json()
    assert info["model_path"] == info["tokenizer_path"] == str(served.model_dir)


def test_batch_forms_of_the_fields_this_server_ignores_are_accepted(served):
    body = {"input_ids": [[5, 9], [7]], "priority": [1, None], "custom_labels": {"team": "rl"}, "log_metrics": True,
            "sampling_params": {"max_new_tokens": 1}}
    assert len(served.generate(body)) == 2


def test_chat_roles_are_taken_in_any_case(served):
    r = served.post("/v1/chat/completions", {"model": "tiny", "max_tokens": 1,
                                             "messages": [{"role": "SYSTEM", "content": "x"}, {"role": "User", "content": "y"}]})
    assert r.status_code == 200, r.text


def test_a_folder_without_tokenizer_files_serves_token_ids_only(serve_model_dir, tmp_path):
    """transformers gave such a folder an empty tokenizer, not an error: text prompts became [] and its
    pad token 0 an extra EOS."""
    import shutil

    from rl.rollout.protocol import RequestError, parse_generate
    from rl.rollout.server import load_state

    for name in ("config.json", "model.safetensors"):
        shutil.copy(serve_model_dir / name, tmp_path / name)
    state = load_state(tmp_path, slots=2)
    try:
        assert state.tokenizer is None
        eos = json.loads((tmp_path / "config.json").read_text())["eos_token_id"]
        assert state.limits.eos_token_ids == tuple(eos if isinstance(eos, list) else [eos])
        with pytest.raises(RequestError, match="no tokenizer: send input_ids"):
            parse_generate({"text": "hello"}, state.limits, state.tokenizer)
    finally:
        state.engine.close()
