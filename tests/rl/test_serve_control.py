"""The embedded server's control endpoints over real HTTP: health and info, flush_cache refusing while
requests are pending, abort by rid and all, the pause modes, and weight sync from disk."""
import shutil
import threading
import time

import jax
import pytest

import models

LONG = {"input_ids": [3, 4, 5], "sampling_params": {"max_new_tokens": 3000, "temperature": 0.0, "ignore_eos": True}}


def in_background(served, body):
    """POST /generate on a thread; returns (thread, box) where box["answer"] appears when it returns."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("answer", served.generate(body)), daemon=True)
    thread.start()
    return thread, box


def server_state(served):
    info = served.http.get("/get_server_info").json()
    return info["internal_states"][0]


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_decoding(served):
    start = server_state(served)["decode_steps"]
    wait_until(lambda: server_state(served)["decode_steps"] > start + 2)


@pytest.fixture(autouse=True)
def resumed(served):
    """A test that fails while the shared server is paused must not leave it paused for the others."""
    yield
    served.post("/continue_generation")


def test_health_and_info(served):
    assert served.http.get("/health", headers={"Authorization": ""}).status_code == 200
    assert served.http.get("/health_generate").status_code == 200
    info = served.http.get("/get_model_info").json()
    assert info["model_path"] == str(served.model_dir) and info["is_generation"] is True
    assert info["weight_version"] == "default"
    assert served.http.get("/get_weight_version").json() == {"weight_version": "default"}
    server = served.http.get("/get_server_info").json()
    assert server["max_running_requests"] == 8 and server["context_length"] == served.cfg.max_position_embeddings
    assert "api_key" not in server


def test_flush_cache_refuses_while_pending_and_abort_by_rid(served):
    thread, box = in_background(served, {**LONG, "rid": "long-1"})
    wait_until(lambda: server_state(served)["pending_requests"] == 1)
    wait_decoding(served)  # an abort before the first token would answer 0 completion tokens
    assert served.post("/flush_cache").status_code == 400
    assert served.post("/abort_request", {"rid": "long-1"}).json()["aborted"] == 1
    thread.join(60)
    meta = box["answer"]["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and 0 < meta["completion_tokens"] < 3000
    wait_until(lambda: served.post("/flush_cache").status_code == 200)


def test_pause_abort_queues_new_requests_until_continue(served):
    long, long_box = in_background(served, LONG)
    wait_decoding(served)
    assert served.post("/pause_generation", {"mode": "abort"}).json()["status"] == "ok"
    long.join(60)
    assert long_box["answer"]["meta_info"]["finish_reason"]["type"] == "abort"
    short, short_box = in_background(served, {"input_ids": [7, 8], "sampling_params": {"max_new_tokens": 4}})
    wait_until(lambda: server_state(served)["pending_requests"] == 1)
    time.sleep(0.5)  # a paused server must not run it
    assert short.is_alive()  # queued, not run
    assert served.post("/flush_cache").status_code == 200  # held before the scheduler, as SGLang holds it
    served.post("/continue_generation")
    short.join(60)
    assert short_box["answer"]["meta_info"]["completion_tokens"] >= 1


def test_a_request_that_arrives_while_paused_runs_on_and_reports_the_weights_loaded_meanwhile(served, tmp_path):
    """It was stamped with the version of its arrival, and blocked the sync's flush_cache."""
    new_dir = tmp_path / "step_9"
    shutil.copytree(served.model_dir, new_dir)
    models.save_hf(new_dir, served.cfg, models.init_params(served.cfg, jax.random.key(9), std=0.1))
    assert served.post("/pause_generation", {"mode": "abort"}).status_code == 200
    thread, box = in_background(served, {"input_ids": [7, 8], "sampling_params": {"max_new_tokens": 4}})
    wait_until(lambda: server_state(served)["pending_requests"] == 1)
    assert served.post("/flush_cache").status_code == 200
    try:
        assert served.post("/update_weights_from_disk", {"model_path": str(new_dir), "weight_version": "9"}).json()["success"]
        served.post("/continue_generation")
        thread.join(60)
        assert box["answer"]["meta_info"]["weight_version"] == "9"
    finally:
        served.post("/update_weights_from_disk", {"model_path": str(served.model_dir), "weight_version": "default"})


@pytest.mark.parametrize("mode", ["in_place", "retract"])
def test_pause_keeps_the_request_and_it_ends_as_if_never_paused(served, mode):
    # Long enough that an idle machine cannot finish it before the pause lands.
    body = {"input_ids": [9, 10, 11], "sampling_params": {"max_new_tokens": 1000, "temperature": 0.0,
                                                          "ignore_eos": True}}
    thread, box = in_background(served, body)
    wait_decoding(served)
    served.post("/pause_generation", {"mode": mode})

    def decoding_stopped():  # the step running when the pause arrived may still end
        steps = server_state(served)["decode_steps"]
        time.sleep(0.4)
        return server_state(served)["decode_steps"] == steps

    wait_until(decoding_stopped, timeout=10)
    assert thread.is_alive()
    served.post("/continue_generation")
    thread.join(60)
    answer = box["answer"]
    assert answer["meta_info"]["finish_reason"] == {"type": "length", "length": 1000}
    assert answer["output_ids"] == served.generate(body)["output_ids"]


def test_abort_all(served):
    threads = [in_background(served, LONG) for _ in range(3)]
    wait_until(lambda: server_state(served)["pending_requests"] == 3)
    assert served.post("/abort_request", {"abort_all": True}).json()["aborted"] == 3
    for thread, box in threads:
        thread.join(60)
        assert box["answer"]["meta_info"]["finish_reason"]["type"] == "abort"


def test_weight_sync_from_disk(served, tmp_path):
    body = {"input_ids": [[5, 9, 14, 3], [42]], "sampling_params": {"max_new_tokens": 8, "temperature": 0.0,
                                                                      "ignore_eos": True}}
    before = [a["output_ids"] for a in served.generate(body)]

    bad = served.post("/update_weights_from_disk", {"model_path": str(tmp_path / "missing"), "weight_version": "9"})
    assert bad.status_code == 400 and bad.json()["success"] is False and "missing" in bad.json()["message"]
    assert served.http.get("/get_weight_version").json()["weight_version"] == "default"
    assert [a["output_ids"] for a in served.generate(body)] == before  # the old weights keep serving

    new_dir = tmp_path / "step_7"
    shutil.copytree(served.model_dir, new_dir)
    new_params = models.init_params(served.cfg, jax.random.key(7), std=0.1)
    models.save_hf(new_dir, served.cfg, new_params)
    assert served.post("/pause_generation", {"mode": "abort"}).status_code == 200
    assert served.post("/flush_cache").status_code == 200
    ok = served.post("/update_weights_from_disk", {"model_path": str(new_dir), "weight_version": "7"})
    assert ok.status_code == 200 and ok.json()["success"] is True
    served.post("/continue_generation")
    assert served.http.get("/get_weight_version").json()["weight_version"] == "7"
    after = served.generate(body)
    assert {a["meta_info"]["weight_version"] for a in after} == {"7"}
    ref = models.generate(new_params, served.cfg, body["input_ids"], max_new_tokens=8, temperature=0.0)
    assert [a["output_ids"] for a in after] == [c.token_ids for c in ref] != before

    restore = served.post("/update_weights_from_disk", {"model_path": str(served.model_dir),
                                                        "weight_version": "default"})
    assert restore.json()["success"] is True
    assert [a["output_ids"] for a in served.generate(body)] == before


def test_abort_answer_has_sglang_fields(served):
    thread, box = in_background(served, {**LONG, "rid": "shape-1"})
    wait_decoding(served)
    assert served.post("/abort_request", {"rid": "shape"}).json()["aborted"] == 1  # SGLang: rid prefix
    thread.join(60)
    reason = box["answer"]["meta_info"]["finish_reason"]
    assert reason == {"type": "abort", "message": "Abort requested", "status_code": None, "err_type": None}


def test_non_streaming_request_is_aborted_when_the_client_goes(served):
    """Behind the API-key check too: a Starlette http middleware hid the disconnect from the handler."""
    import httpx

    with pytest.raises(httpx.ReadTimeout):
        served.post("/generate", {**LONG, "rid": "gone-1"}, timeout=2.0)
    wait_until(lambda: server_state(served)["pending_requests"] == 0, timeout=5)  # the whole run takes ~15 s


def test_unpaused_weight_update_waits_for_generations_in_flight(served, tmp_path):
    """As SGLang's model_update_lock: no completion mixes two weight versions."""
    body = {**LONG, "sampling_params": {**LONG["sampling_params"], "max_new_tokens": 400}}
    thread, box = in_background(served, body)
    wait_decoding(served)
    new_dir = tmp_path / "v2"
    shutil.copytree(served.model_dir, new_dir)
    ok = served.post("/update_weights_from_disk", {"model_path": str(new_dir), "weight_version": "v2"})
    assert ok.json()["success"] is True
    assert server_state(served)["pending_requests"] == 0  # the generation ended before the swap
    thread.join(60)
    answer = box["answer"]
    assert answer["meta_info"]["weight_version"] == "default" and len(answer["output_ids"]) == 400
    assert served.generate({"input_ids": [5], "sampling_params": {"max_new_tokens": 1}})["meta_info"][
        "weight_version"] == "v2"
    served.post("/update_weights_from_disk", {"model_path": str(served.model_dir), "weight_version": "default"})
