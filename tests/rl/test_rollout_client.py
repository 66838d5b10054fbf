"""The rollout client against the embedded server over real HTTP on 127.0.0.1: records, groups,
as_completed, faults (each with every sample exactly once) and weight sync."""
import asyncio
import shutil
import socket
import time
from collections import Counter
from contextlib import contextmanager

import jax
import pytest

from rl.rollout import RolloutClient, RolloutError, SampleRequest, WeightSyncError, group_requests, wait_healthy
from rl.rollout.embedded import EmbeddedServer
from tests.rl.faults import FaultProxy

SAMPLING = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}
LONG = {"max_new_tokens": 40, "temperature": 1.0, "ignore_eos": True}  # still running when a fault strikes


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache, shared by this module's server processes: the first start
    compiles, the restarts load (about half the start time)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, compile_cache):
    with EmbeddedServer(tiny_model_dir, env=compile_cache) as s:
        yield s.url


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


@pytest.fixture(scope="module")
def spare(tiny_model_dir, compile_cache):
    """A second server on a fixed port, which tests kill -9 and start again (start() reuses the port)."""
    s = EmbeddedServer(tiny_model_dir, env=compile_cache)
    yield s
    s.stop()


def ensure_running(server):
    if server.process is None or server.process.poll() is not None:
        server.start()


def kill(server):
    server.process.kill()
    server.process.wait()


def draw_all(client, requests):
    """as_completed, collected in arrival order."""
    async def collect():
        return [s async for s in client.as_completed(requests)]
    return collect()


def assert_exactly_once(samples, requests):
    counts = Counter(s.identity for s in samples)
    assert counts == Counter(r.identity for r in requests), "a sample was lost or duplicated"
    for s in samples:
        assert len(s.output_ids) == len(s.logprobs) > 0
        assert s.finish_reason in ("stop", "length")


def many(prompt, groups, n, sampling=SAMPLING, seed=0):
    return [r for g in range(groups) for r in group_requests(f"p{g}", prompt, n, sampling, seed + g)]


def test_a_sample_is_a_full_record_and_its_seed_reproduces_it(server, prompt):
    async def run():
        async with RolloutClient(server) as client:
            a = await client.sample(prompt, SAMPLING, seed=11, key="k")
            b = await client.sample(prompt, SAMPLING, seed=11, key="k")  # same identity again, once a is done
            c = await client.sample(prompt, SAMPLING, seed=12)
            return a, b, c
    a, b, c = asyncio.run(run())
    assert (a.key, a.index, a.prompt_ids, a.server, a.attempts, a.seed) == ("k", 0, list(prompt), server, 1, 11)
    assert len(a.output_ids) == len(a.logprobs) == 8 and a.finish_reason == "length"
    assert all(lp <= 0 for lp in a.logprobs) and a.latency > 0 and isinstance(a.weight_version, str)
    assert (b.output_ids, b.logprobs) == (a.output_ids, a.logprobs)
    assert c.output_ids != a.output_ids


def test_groups_and_as_completed_return_every_sample_once(server, prompt):
    requests = [SampleRequest("short", 0, tuple(prompt), {"max_new_tokens": 1}, 5)] + many(prompt, 2, 3, LONG)

    async def run():
        async with RolloutClient(server, max_concurrency=4) as client:
            group = await client.group(prompt, 4, SAMPLING, seed=3)
            with_n = await client.group(prompt, 3, SAMPLING, seed=3, use_n=True)
            arrived = [s async for s in client.as_completed(requests[1:] + requests[:1])]
            with pytest.raises(ValueError, match="requested twice"):
                [s async for s in client.as_completed(requests[:1] * 2)]
            return group, with_n, arrived
    group, with_n, arrived = asyncio.run(run())
    assert [s.index for s in group] == [0, 1, 2, 3] and len({s.seed for s in group}) == 4
    assert len({tuple(s.output_ids) for s in group}) > 1  # own seeds: the group is not one sample 4 times
    assert [s.index for s in with_n] == [0, 1, 2] and all(len(s.output_ids) == 8 for s in with_n)
    assert_exactly_once(arrived, requests)
    assert [s.identity for s in arrived].index(("short", 0)) < len(arrived) - 1  # graded as soon as it lands


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_injected_500s_and_dropped_answers_are_retried_exactly_once(server, prompt, fault):
    requests = many(prompt, 2, 3)
    with FaultProxy(server) as proxy:
        proxy.inject(fault, count=3)

        async def run():
            async with RolloutClient(proxy.url, retries=4, backoff=0.05) as client:
                return await draw_all(client, requests)
        samples = asyncio.run(run())
        assert proxy.injected(fault) == 3 and proxy.pending == 0
    assert_exactly_once(samples, requests)
    assert sum(s.attempts - 1 for s in samples) == 3

    async def clean():  # a retried sample is the same sample: its seed decides it
        async with RolloutClient(server) as client:
            return await draw_all(client, requests)
    expected = {s.identity: s.output_ids for s in asyncio.run(clean())}
    assert {s.identity: s.output_ids for s in samples} == expected


def test_an_answer_stalled_past_its_timeout_is_retried_once(server, prompt):
    requests = many(prompt, 1, 2)
    with FaultProxy(server) as proxy:
        proxy.inject("stall", seconds=8.0)

        async def run():
            async with RolloutClient(proxy.url, timeout=4.0, backoff=0.05) as client:
                return await draw_all(client, requests)
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
            await wait_healthy(proxy.url, timeout=30)
            async with RolloutClient(proxy.url, max_concurrency=2, api_key="secret") as client:
                return await draw_all(client, requests)
        samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    assert proxy.max_inflight == 2
    assert {s.authorization for s in proxy.seen} == {"Bearer secret", ""}  # wait_healthy had no key


def test_a_request_the_server_rejects_fails_at_once_naming_the_server(server, prompt):
    async def run():
        async with RolloutClient(server, retries=5) as client:
            start = time.monotonic()
            with pytest.raises(RolloutError, match="HTTP 400") as error:
                await client.sample([10**9], SAMPLING, seed=0, key="bad")
            return error.value, time.monotonic() - start
    error, elapsed = asyncio.run(run())
    assert server in str(error) and "'bad'#0" in str(error)
    assert elapsed < 5  # no retries on a 4xx


def test_a_dead_server_exhausts_retries_with_a_clear_error(prompt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def run():
        async with RolloutClient(dead, retries=2, backoff=0.01) as client:
            with pytest.raises(RolloutError, match="gave up after 3 failed attempts") as error:
                await client.sample(prompt, SAMPLING, seed=0, key="lost")
            with pytest.raises(TimeoutError, match=dead):
                await wait_healthy(dead, timeout=0.5, interval=0.1)
            return error.value
    error = asyncio.run(run())
    assert dead in str(error) and "'lost'#0" in str(error)


def test_a_server_killed_mid_generation_and_restarted_loses_and_repeats_nothing(spare, prompt):
    ensure_running(spare)
    requests = [SampleRequest("first", 0, tuple(prompt), {"max_new_tokens": 2}, 1)] + many(prompt, 2, 3, LONG)

    async def run():
        # retries enough to wait out the restart (tens of seconds on a busy machine)
        async with RolloutClient(spare.url, retries=300, backoff=0.2, max_backoff=1.0) as client:
            arrived = []
            async for s in client.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:  # the long ones are mid-generation now
                    kill(spare)
                    await asyncio.get_running_loop().run_in_executor(None, spare.start)
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    assert any(s.attempts > 1 for s in samples)


def test_two_servers_one_dies_and_the_other_finishes_everything(server, spare, prompt):
    ensure_running(spare)
    requests = [SampleRequest("first", 0, tuple(prompt), {"max_new_tokens": 2}, 1)] + many(prompt, 3, 3, LONG)

    async def run():
        async with RolloutClient([server, spare.url], retries=6, backoff=0.1) as client:
            arrived = []
            async for s in client.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:
                    kill(spare)
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    moved = [s for s in samples if s.attempts > 1]
    assert moved and all(s.server == server for s in moved)


def test_weight_sync_changes_greedy_outputs_and_the_reported_version(server, prompt, tiny_model_dir, other_weights):
    greedy = {"max_new_tokens": 8, "temperature": 0.0}

    async def run():
        async with RolloutClient(server) as client:
            before = await client.sample(prompt, greedy, seed=0)
            assert await client.sync_weights(other_weights, 101) == {server: "101"}
            after = await client.sample(prompt, greedy, seed=0)
            assert await client.sync_weights(tiny_model_dir, "102") == {server: "102"}
            back = await client.sample(prompt, greedy, seed=0)
            return before, after, back, client.weight_version
    before, after, back, version = asyncio.run(run())
    assert after.weight_version == "101" and back.weight_version == "102" == version
    assert after.output_ids != before.output_ids
    assert back.output_ids == before.output_ids and back.logprobs == pytest.approx(before.logprobs, abs=1e-4)


def test_a_sync_during_generation_resubmits_the_aborted_samples(server, prompt, other_weights, tiny_model_dir):
    requests = [SampleRequest("first", 0, tuple(prompt), {"max_new_tokens": 2}, 1)] + many(prompt, 2, 3, LONG)

    async def run():
        async with RolloutClient(server) as client:
            arrived = []
            async for s in client.as_completed(requests):
                arrived.append(s)
                if len(arrived) == 1:
                    await client.sync_weights(other_weights, "201")
            await client.sync_weights(tiny_model_dir, "202")
            return arrived
    samples = asyncio.run(run())
    assert_exactly_once(samples, requests)
    resubmitted = [s for s in samples if s.attempts > 1]
    assert resubmitted and all(s.weight_version == "201" for s in resubmitted)


def test_a_bad_folder_fails_the_sync_naming_the_server_and_old_weights_keep_serving(server, prompt, tmp_path):
    (tmp_path / "config.json").write_text("{}")

    async def run():
        async with RolloutClient(server) as client:
            before = await client.sample(prompt, SAMPLING, seed=4)
            with pytest.raises(WeightSyncError) as error:
                await client.sync_weights(tmp_path, "999")
            after = await client.sample(prompt, SAMPLING, seed=4)
            return before, after, error.value
    before, after, error = asyncio.run(run())
    assert list(error.failures) == [server] and server in str(error) and "999" in str(error)
    assert "update_weights_from_disk refused" in error.failures[server]
    assert after.weight_version == before.weight_version != "999"
    assert after.output_ids == before.output_ids
