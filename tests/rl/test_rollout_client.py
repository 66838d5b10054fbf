"""The rollout client against embedded servers over real HTTP on 127.0.0.1: records, groups,
as_completed, faults (each with every sample exactly once) and weight sync.

Two server processes: the session's `served` (shared with test_serve_*; never killed or re-weighted
here) and this module's `spare`, which the fault tests kill -9 and restart and the sync tests re-weight.
"""
import asyncio
import re
import shutil
import socket
import time
from collections import Counter

import jax
import pytest

from rl.rollout import RolloutClient, RolloutError, SampleRequest, WeightSyncError, group_requests, wait_healthy
from rl.rollout.embedded import EmbeddedServer
from tests.rl.faults import FaultProxy
from tests.rl.serve_helpers import API_KEY, SLOTS

SAMPLING = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}
LONG = {"max_new_tokens": 40, "temperature": 1.0, "ignore_eos": True}  # still running when a fault strikes
# Still running when a kill or a sync lands from the client's side: 40 steps (~20 ms idle) is a race there.
FAULT = {**LONG, "max_new_tokens": 1000}


def client(urls, **options) -> RolloutClient:
    return RolloutClient(urls, api_key=API_KEY, **options)


@pytest.fixture(scope="module")
def server(served):
    return served.url


@pytest.fixture(scope="module")
def spare(tiny_model_dir, tmp_path_factory):
    """A second server on a fixed port (start() reuses it), with JAX's persistent compilation cache so
    that a restart loads what the first start compiled."""
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    s = EmbeddedServer(tiny_model_dir, extra_args=["--api-key", API_KEY, "--max-running-requests", str(SLOTS)],
                       env=cache)
    yield s
    s.stop()


def ensure_running(server):
    if server.process is None or server.process.poll() is not None:
        server.start()


def kill(server):
    server.process.kill()
    server.process.wait()


@pytest.fixture(scope="module")
def prompt(tiny_model_dir):
    """Short enough that prompt + LONG fits the engine's smallest cache: fewer shapes to compile."""
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode("def add(a, b):", add_special_tokens=False)
    assert len(ids) + LONG["max_new_tokens"] < 64
    return ids


@pytest.fixture(scope="module")
def other_weights(tiny_model_dir, tmp_path_factory):
    """The tiny model's folder with other random weights (same config and tokenizer). Their std is larger:
    at the fixture's 0.02 a tied-embedding model greedily repeats the prompt's last token whatever its
    weights, so greedy outputs could not tell the two apart."""
    from models import init_params, load_hf, save_hf
    folder = tmp_path_factory.mktemp("other_weights")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    cfg, _ = load_hf(tiny_model_dir)
    save_hf(folder, cfg, init_params(cfg, jax.random.key(1), std=0.2))
    return folder


async def draw_all(c, requests):
    """as_completed, collected in arrival order."""
    return [s async for s in c.as_completed(requests)]


def assert_exactly_once(samples, requests):
    counts = Counter(s.identity for s in samples)
    assert counts == Counter(r.identity for r in requests), "a sample was lost or duplicated"
    for s in samples:
        assert len(s.output_ids) == len(s.logprobs) > 0
        assert s.finish_reason in ("stop", "length")


def many(prompt, groups, n, sampling=SAMPLING, seed=0):
    return [r for g in range(groups) for r in group_requests(f"p{g}", prompt, n, sampling, seed + g)]


def with_first(prompt, requests):
    """A 2-token sample ahead of long ones: when it lands, the others are mid-generation."""
    return [SampleRequest("first", 0, tuple(prompt), {"max_new_tokens": 2}, 1)] + requests


# ---- records, groups, as_completed ----

def test_a_sample_is_a_full_record_and_its_seed_reproduces_it(server, prompt):
    async def run():
        await wait_healthy(server, timeout=30, api_key=API_KEY)
        async with client(server) as c:
            a = await c.sample(prompt, SAMPLING, seed=11, key="k")
            b = await c.sample(prompt, SAMPLING, seed=11, key="k")  # the same identity again, once a is done
            other = await c.sample(prompt, SAMPLING, seed=12)
            return a, b, other
    a, b, other = asyncio.run(run())
    assert (a.key, a.index, a.prompt_ids, a.server, a.attempts, a.seed) == ("k", 0, list(prompt), server, 1, 11)
    assert len(a.output_ids) == len(a.logprobs) == 8 and a.finish_reason == "length"
    assert all(lp <= 0 for lp in a.logprobs) and a.latency > 0 and a.weight_version == "default"
    assert (b.output_ids, b.logprobs) == (a.output_ids, a.logprobs)
    assert other.output_ids != a.output_ids


def test_groups_and_as_completed_return_every_sample_once(server, prompt):
    requests = with_first(prompt, many(prompt, 2, 3, LONG))

    async def run():
        async with client(server, max_concurrency=4) as c:
            group = await c.group(prompt, 4, SAMPLING, seed=3)
            with_n = await c.group(prompt, 3, SAMPLING, seed=3, use_n=True)
            arrived = await draw_all(c, requests[1:] + requests[:1])  # "first" sent last, still lands early
            with pytest.raises(ValueError, match="requested twice"):
                await draw_all(c, requests[:1] * 2)
            return group, with_n, arrived
    group, with_n, arrived = asyncio.run(run())
    assert [s.index for s in group] == [0, 1, 2, 3] and len({s.seed for s in group}) == 4
    assert len({tuple(s.output_ids) for s in group}) == 4  # own seeds: not one sample four times
    assert [s.index for s in with_n] == [0, 1, 2] and all(len(s.output_ids) == 8 for s in with_n)
    assert_exactly_once(arrived, requests)
    assert [s.identity for s in arrived].index(("first", 0)) < len(arrived) - 1  # graded as soon as it lands


# ---- faults through the proxy, against the shared server ----

@pytest.mark.parametrize("fault", ["500", "drop"])
def test_injected_500s_and_dropped_answers_are_retried_exactly_once(server, prompt, fault):
    requests = many(prompt, 2, 3)
    with FaultProxy(server) as proxy:
        proxy.inject(fault, count=3)

        async def run():
            async with client(proxy.url, retries=4, backoff=0.05) as c:
                return await draw_all(c, requests)
        samples = asyncio.run(run())
        assert proxy.injected(fault) == 3 and proxy.pending == 0
    assert_exactly_once(samples, requests)
    assert sum(s.attempts - 1 for s in samples) == 3

    async def clean():  # a retried sample is the same sample: its seed decides it
        async with client(server) as c:
            return await draw_all(c, requests)
    expected = {s.identity: s.output_ids for s in asyncio.run(clean())}
    assert {s.identity: s.output_ids for s in samples} == expected


def test_an_answer_with_nan_logprobs_is_retried(server, prompt):
    """A malformed answer (here NaN logprobs) is worth another try, not an error outside RolloutError."""
    requests = many(prompt, 1, 2)
    with FaultProxy(server) as proxy:
        proxy.inject("nan")

        async def run():
            async with client(proxy.url, backoff=0.05) as c:
                return await draw_all(c, requests)
        samples = asyncio.run(run())
        assert proxy.injected("nan") == 1
    assert_exactly_once(samples, requests)
    assert sum(s.attempts - 1 for s in samples) == 1


def test_closing_the_client_fails_its_draws_with_a_rollout_error(server, prompt):
    """A draw running at aclose(), or started after it, failed with httpx's bare RuntimeError."""
    async def run():
        c = client(server, retries=2, backoff=0.05)
        running = asyncio.create_task(c.sample(prompt, FAULT, seed=1, key="closed"))
        await asyncio.sleep(0.5)
        await c.aclose()
        for draw in (running, c.sample(prompt, SAMPLING, seed=2, key="after")):
            with pytest.raises(RolloutError, match="the client was closed"):
                await draw
    asyncio.run(run())


@pytest.mark.parametrize("meta, field", [
    ({"output_token_logprobs": [[3.0, 5, None]]}, "output_token_logprobs[0]"),  # a probability above 1
    ({"output_token_logprobs": [[True, 5, None]]}, "output_token_logprobs[0]"),  # was read as logprob 1.0
    ({"output_token_logprobs": [[-0.1, 5, None]], "finish_reason": {"type": "eos"}}, "finish_reason"),
])
def test_answers_no_sglang_server_gives_are_malformed(meta, field):
    """They were taken as samples: a positive or boolean logprob, a finish type beyond stop / length / abort."""
    from rl.rollout.records import BadAnswer, SampleRequest, to_sample

    answer = {"text": "", "meta_info": {"finish_reason": {"type": "length", "length": 1}, **meta}}
    with pytest.raises(BadAnswer, match=re.escape(field)):
        to_sample(answer, SampleRequest("k", 0, (1, 2), {}, 0), server="s", latency=0.0, attempts=1)
    ok = {"text": "", "meta_info": {"finish_reason": {"type": "stop", "matched": 5},
                                    "output_token_logprobs": [[1e-7, 5, None]]}}  # rounding of a near-certain token
    assert to_sample(ok, SampleRequest("k", 0, (1, 2), {}, 0), server="s", latency=0.0, attempts=1).output_ids == [5]


def test_a_server_that_ignores_n_fails_the_group_at_once(server, prompt):
    """One completion for n=3 is the server's answer, not a cut one: it was retried for minutes."""
    with FaultProxy(server) as proxy:
        proxy.inject("one")

        async def run():
            async with client(proxy.url, retries=5) as c:
                start = time.monotonic()
                with pytest.raises(RolloutError, match="answered 1 completion.* for sampling n=3") as error:
                    await c.group(prompt, 3, SAMPLING, seed=0, key="g", use_n=True)
                return error.value, time.monotonic() - start
        error, elapsed = asyncio.run(run())
        assert [s.fault for s in proxy.seen if s.path == "/generate"] == ["one"]  # not retried
    assert proxy.url in str(error) and "use_n=False" in str(error) and elapsed < 5


def test_use_n_groups_are_guarded_against_a_concurrent_duplicate(server, prompt):
    async def run():
        async with client(server) as c:
            first = asyncio.create_task(c.group(prompt, 2, SAMPLING, seed=0, key="g", use_n=True))
            await asyncio.sleep(0)
            with pytest.raises(ValueError, match="already being drawn"):
                await c.group(prompt, 2, SAMPLING, seed=0, key="g", use_n=True)
            return await first
    assert [s.index for s in asyncio.run(run())] == [0, 1]


def test_a_server_that_never_answers_cannot_outlast_the_timeouts(server, prompt):
    """Each /health_generate poll and each flush_cache try used to wait up to 30 s / 60 s whatever the
    timeout asked for."""
    with FaultProxy(server) as proxy:
        proxy.inject("stall", path="/health_generate", seconds=20.0)
        proxy.inject("stall", path="/flush_cache", seconds=20.0)

        async def run():
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="not healthy after 1s"):
                await wait_healthy(proxy.url, timeout=1.0, api_key=API_KEY, interval=0.1)
            health = time.monotonic() - start
            async with client(proxy.url) as c:
                start = time.monotonic()
                with pytest.raises(WeightSyncError, match="flush_cache did not succeed within 1s"):
                    await c.sync_weights("/nonexistent", "v2", flush_timeout=1.0)
                return health, time.monotonic() - start
        health, sync = asyncio.run(run())
    assert health < 5 and sync < 5, (health, sync)


def test_an_answer_stalled_past_its_timeout_is_retried_once(server, prompt):
    requests = many(prompt, 1, 2)
    with FaultProxy(server) as proxy:
        proxy.inject("stall", seconds=8.0)

        async def run():
            async with client(proxy.url, timeout=4.0, backoff=0.05) as c:
                return await draw_all(c, requests)
        samples = asyncio.run(run())
        stalled = [s for s in proxy.seen if s.fault == "stall"]
        assert len(stalled) == 1
    assert_exactly_once(samples, requests)
    assert max(s.attempts for s in samples) >= 2
    # every attempt had its own rid, and the stalled one was aborted on the server
    generate_rids = [s.rid for s in proxy.seen if s.path == "/generate"]
    assert len(set(generate_rids)) == len(generate_rids) == sum(s.attempts for s in samples)
    assert stalled[0].rid in {s.rid for s in proxy.seen if s.path == "/abort_request"}


def test_concurrency_is_capped_and_the_api_key_is_sent(server, prompt):
    requests = many(prompt, 2, 3, LONG)
    with FaultProxy(server) as proxy:
        async def run():
            async with client(proxy.url, max_concurrency=2) as c:
                return await draw_all(c, requests)
        samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    assert proxy.max_inflight == 2
    assert {s.authorization for s in proxy.seen} == {f"Bearer {API_KEY}"}


def test_a_request_the_server_rejects_fails_at_once_naming_the_server(server, prompt):
    async def run():
        async with client(server, retries=5) as c:
            start = time.monotonic()
            with pytest.raises(RolloutError, match="HTTP 400") as error:
                await c.sample([10**9], SAMPLING, seed=0, key="bad")
            return error.value, time.monotonic() - start
    error, elapsed = asyncio.run(run())
    assert server in str(error) and "'bad'#0" in str(error)
    assert elapsed < 5  # no retries on a 4xx


def test_a_dead_server_exhausts_retries_with_a_clear_error(prompt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def run():
        async with client(dead, retries=2, backoff=0.01) as c:
            with pytest.raises(RolloutError, match="gave up after 3 failed attempts") as error:
                await c.sample(prompt, SAMPLING, seed=0, key="lost")
            with pytest.raises(TimeoutError, match=dead):
                await wait_healthy(dead, timeout=0.5, interval=0.1)
            return error.value
    error = asyncio.run(run())
    assert dead in str(error) and "'lost'#0" in str(error)


def test_servers_off_the_loop_s_version_are_found_and_silent_ones_are_not_counted(server):
    """The loop pushes its weights again to a server restarted on others: before, every rollout it drew
    was dropped as stale, step after step, and the run trained on nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def run():
        async with client(server, sync_urls=[server, dead]) as c:
            return await c.servers_off_version("default"), await c.servers_off_version(7)
    assert asyncio.run(run()) == ([], [server])


# ---- a real server process killed -9 (the spare) ----

def test_a_server_killed_mid_generation_and_restarted_loses_and_repeats_nothing(spare, prompt):
    ensure_running(spare)
    requests = with_first(prompt, many(prompt, 2, 3, FAULT))

    async def run():
        # retries enough to wait out the restart (tens of seconds on a busy machine)
        async with client(spare.url, retries=300, backoff=0.2, max_backoff=1.0) as c:
            arrived = []
            async for s in c.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:
                    kill(spare)
                    await asyncio.sleep(1.0)  # the others meet refused connections and back off
                    # Restarted from this (main) thread, blocking the loop meanwhile: the server's
                    # PR_SET_PDEATHSIG fires when the *thread* that started it exits, so a thread pool
                    # would kill it again.
                    spare.start()
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    assert any(s.attempts > 1 for s in samples)


# ---- weight sync (on the spare) ----

def test_weight_sync_changes_greedy_outputs_and_the_reported_version(spare, prompt, tiny_model_dir, other_weights):
    ensure_running(spare)
    greedy = {"max_new_tokens": 8, "temperature": 0.0}

    async def run():
        async with client(spare.url) as c:
            before = await c.sample(prompt, greedy, seed=0)
            assert await c.sync_weights(other_weights, 101) == {spare.url: "101"}
            after = await c.sample(prompt, greedy, seed=0)
            assert await c.sync_weights(tiny_model_dir, "102") == {spare.url: "102"}
            back = await c.sample(prompt, greedy, seed=0)
            return before, after, back, c.weight_version
    before, after, back, version = asyncio.run(run())
    assert after.weight_version == "101" and back.weight_version == "102" == version
    assert after.output_ids != before.output_ids
    assert back.output_ids == before.output_ids and back.logprobs == pytest.approx(before.logprobs, abs=1e-4)


def test_a_sync_during_generation_resubmits_the_aborted_samples(spare, prompt, other_weights, tiny_model_dir):
    ensure_running(spare)
    requests = with_first(prompt, many(prompt, 2, 3, FAULT))

    async def run():
        async with client(spare.url) as c:
            arrived = []
            async for s in c.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:
                    await c.sync_weights(other_weights, "201")
            await c.sync_weights(tiny_model_dir, "202")
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    resubmitted = [s for s in samples if s.attempts > 1]
    assert resubmitted and all(s.weight_version == "201" for s in resubmitted)


def test_a_bad_folder_fails_the_sync_naming_the_server_and_old_weights_keep_serving(spare, prompt, tmp_path):
    ensure_running(spare)
    (tmp_path / "config.json").write_text("{}")

    async def run():
        async with client(spare.url) as c:
            before = await c.sample(prompt, SAMPLING, seed=4)
            with pytest.raises(WeightSyncError) as error:
                await c.sync_weights(tmp_path, "999")
            after = await c.sample(prompt, SAMPLING, seed=4)
            return before, after, error.value
    before, after, error = asyncio.run(run())
    assert list(error.failures) == [spare.url] and spare.url in str(error) and "999" in str(error)
    assert "update_weights_from_disk refused" in error.failures[spare.url]
    assert after.weight_version == before.weight_version != "999"
    assert after.output_ids == before.output_ids


# ---- last: the spare dies for good ----

def test_two_servers_one_dies_and_the_other_finishes_everything(server, spare, prompt):
    ensure_running(spare)
    requests = with_first(prompt, many(prompt, 3, 3, FAULT))

    async def run():
        async with client([server, spare.url], retries=6, backoff=0.1) as c:
            arrived = []
            async for s in c.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:
                    kill(spare)
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    moved = [s for s in samples if s.attempts > 1]
    assert moved and all(s.server == server for s in moved)
