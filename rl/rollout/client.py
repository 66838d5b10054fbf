"""Async client for SGLang's native API on one or several servers (or one sglang_router URL).

Every requested sample is returned exactly once: a sample is one /generate request with n=1, a unique rid
and its own sampling_seed; connection errors, 5xx answers and timeouts are retried with backoff (on another
server when there is one), and answers aborted by a weight sync (finish_reason "abort") are resubmitted.
Weight sync runs SGLang's from-disk sequence on every server. Create and use a client inside one event
loop (`async with RolloutClient(...) as client:`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Mapping, Sequence

import httpx

from rl.rollout.records import (BadAnswer, Sample, SampleRequest, abort_message, abort_status, finish_type,
                                group_requests, output_tokens, sample_seed, to_sample)

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """A sample could not be drawn: a non-retryable answer, or retries exhausted. Names sample and server."""


class WeightSyncError(RuntimeError):
    """Some server did not confirm the new weights. `failures` maps each such URL to its reason, `confirmed`
    maps the others to the version they report. Every server was told to continue generating."""

    def __init__(self, version: str, failures: dict[str, str], confirmed: dict[str, str]):
        self.version, self.failures, self.confirmed = version, failures, confirmed
        lines = "\n".join(f"  {url}: {why}" for url, why in failures.items())
        super().__init__(f"weight sync to version {version!r} failed on {len(failures)} of "
                         f"{len(failures) + len(confirmed)} server(s):\n{lines}")


class _Retryable(Exception):
    """A failure worth another try: no connection, a dropped answer, 5xx, a timeout, a malformed answer."""


class _Rejected(Exception):
    """An answer a retry cannot change: a 4xx (the request itself is wrong), or a whole answer with another
    number of completions than sampling n."""


def _urls(urls: str | Sequence[str], what: str) -> list[str]:
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"{what}: at least one server URL is needed")
    for url in urls:
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ValueError(f"{what}: {url!r} is not an http(s):// URL")
    return [url.rstrip("/") for url in urls]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class _Server:
    url: str
    inflight: int = 0  # requests assigned and not answered: the least loaded server gets the next one
    down_until: float = 0.0  # monotonic time before which a failed server is avoided
    failures: int = 0  # consecutive failed requests: how long it is avoided grows with them


class RolloutClient:
    """Draws samples from SGLang servers.

    urls: one URL, several server URLs (load spread over them), or a router URL.
    sync_urls: the servers that sync_weights talks to; defaults to `urls` (give the workers' URLs when
        `urls` is a router, which does not forward weight updates).
    max_concurrency: the most /generate requests in flight at once, over all servers.
    timeout: seconds one /generate request may take before it is aborted and retried.
    retries: failed attempts (connection errors, 5xx, timeouts) allowed per sample before RolloutError;
        backoff doubles from `backoff` up to `max_backoff` seconds between them (with jitter), so the
        defaults ride out a server restart of about 1-2.5 minutes.
    max_aborts: resubmissions allowed per sample after server-side aborts (pause_generation) before
        RolloutError, so that a server aborting everything cannot loop forever.
    """

    def __init__(self, urls: str | Sequence[str], *, sync_urls: str | Sequence[str] | None = None,
                 max_concurrency: int = 256, timeout: float = 1800.0, connect_timeout: float = 10.0,
                 retries: int = 10, backoff: float = 0.5, max_backoff: float = 30.0, max_aborts: int = 16,
                 api_key: str | None = None):
        if max_concurrency < 1 or timeout <= 0 or retries < 0 or backoff <= 0 or max_aborts < 0:
            raise ValueError("RolloutClient: max_concurrency >= 1, timeout > 0, retries >= 0, backoff > 0 and "
                             f"max_aborts >= 0 are required, got {max_concurrency}, {timeout}, {retries}, "
                             f"{backoff}, {max_aborts}")
        self._servers = [_Server(u) for u in _urls(urls, "RolloutClient urls")]
        self.sync_urls = _urls(sync_urls, "RolloutClient sync_urls") if sync_urls else [s.url for s in self._servers]
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.max_aborts = max_aborts
        self.weight_version: str | None = None  # the last version sync_weights confirmed
        self._http = httpx.AsyncClient(headers=_headers(api_key),
                                       timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                       limits=httpx.Limits(max_connections=max_concurrency,
                                                           max_keepalive_connections=max_concurrency))
        # Control calls (pause, flush, abort) get their own pool: a pool full of long generations must
        # never block the pause that ends them.
        self._control = httpx.AsyncClient(headers=_headers(api_key),
                                          timeout=httpx.Timeout(60.0, connect=connect_timeout))
        self._slots = asyncio.Semaphore(max_concurrency)
        self._open = asyncio.Event()  # cleared while this client syncs weights: nothing new is sent
        self._open.set()
        self._sync_lock = asyncio.Lock()
        self._drawing: set[tuple[str, int]] = set()
        self._background: set[asyncio.Task] = set()
        self._rid_prefix = uuid.uuid4().hex[:12]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    async def __aenter__(self) -> "RolloutClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)  # pending aborts (each bounded by 10 s)
        await self._http.aclose()
        await self._control.aclose()

    # ---- sampling ----

    async def sample(self, prompt_ids: Sequence[int], sampling: Mapping[str, Any], *, seed: int,
                     key: str | None = None, index: int = 0) -> Sample:
        """One completion of `prompt_ids` (token ids) with SGLang `sampling` params and sampling_seed `seed`."""
        return await self.draw(SampleRequest(key or uuid.uuid4().hex, index, tuple(prompt_ids), dict(sampling), seed))

    async def group(self, prompt_ids: Sequence[int], n: int, sampling: Mapping[str, Any], *, seed: int,
                    key: str | None = None, use_n: bool = False) -> list[Sample]:
        """n completions of one prompt, in index order. By default n requests, each with its own seed
        (`sample_seed(seed, i)`), spread over the servers. use_n=True sends one request with sampling n=n
        instead (SGLang then shares one prefill; no per-sample seed is sent, so it is not reproducible)."""
        key = key or uuid.uuid4().hex
        requests = group_requests(key, prompt_ids, n, sampling, seed)
        if use_n:
            return await self._group_with_n(requests, seed)
        return await _all(self.draw(r) for r in requests)

    async def as_completed(self, requests: Iterable[SampleRequest]) -> AsyncIterator[Sample]:
        """Yield each requested sample the moment it arrives (so it can be graded at once), every identity
        exactly once. Raises the first RolloutError after cancelling the rest; closing the iterator early
        (`contextlib.aclosing`) cancels what is still running."""
        requests = list(requests)
        seen = set()
        for r in requests:
            if r.identity in seen:
                raise ValueError(f"{r.label} is requested twice")
            seen.add(r.identity)
        tasks = [asyncio.create_task(self.draw(r)) for r in requests]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def draw(self, request: SampleRequest) -> Sample:
        """Draw one requested sample; the building block of sample, group and as_completed."""
        if request.identity in self._drawing:
            raise ValueError(f"{request.label} is already being drawn by this client")
        if "n" in request.sampling and request.sampling["n"] != 1:
            raise ValueError(f"{request.label}: sampling n must be 1 for one sample (use group), "
                             f"got {request.sampling['n']!r}")
        self._drawing.add(request.identity)
        try:
            params = {**request.sampling, "n": 1}
            if request.seed is not None:
                params["sampling_seed"] = request.seed
            attempts = aborts = 0
            while True:
                answers, server, latency, tries = await self._generate(request, params, attempts)
                attempts += tries
                answer = answers[0]
                if finish_type(answer) != "abort":
                    return to_sample(answer, request, server=server, latency=latency, attempts=attempts)
                aborts += 1
                self._check_abort(answer, request, server, aborts)
                if aborts > 1:  # a server that aborts everything is not hammered
                    await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (aborts - 2)))
        finally:
            self._drawing.discard(request.identity)

    async def _group_with_n(self, requests: list[SampleRequest], seed: int) -> list[Sample]:
        first = requests[0]
        if any(r.identity in self._drawing for r in requests):
            raise ValueError(f"{first.label}: this group is already being drawn by this client")
        self._drawing.update(r.identity for r in requests)
        try:
            params = {**first.sampling, "n": len(requests)}
            params.pop("sampling_seed", None)
            answers, server, latency, attempts = await self._generate(first, params, 0)
        finally:
            self._drawing.difference_update(r.identity for r in requests)
        samples, redraw = [], []
        for r, answer in zip(requests, answers, strict=True):
            if finish_type(answer) == "abort":
                self._check_abort(answer, r, server, 1)
                redraw.append(SampleRequest(r.key, r.index, r.prompt_ids, r.sampling, sample_seed(seed, r.index)))
            else:
                samples.append(to_sample(answer, SampleRequest(r.key, r.index, r.prompt_ids, r.sampling, None),
                                         server=server, latency=latency, attempts=attempts))
        samples += await _all(self.draw(r) for r in redraw)  # aborted members are redrawn one by one
        return sorted(samples, key=lambda s: s.index)

    def _check_abort(self, answer: dict, request: SampleRequest, server: str, aborts: int) -> None:
        """An aborted answer is resubmitted unless the request itself was at fault or aborts keep coming."""
        status = abort_status(answer)
        if status is not None and 400 <= status < 500:
            raise RolloutError(f"{request.label}: {server} rejected it: {abort_message(answer)}")
        if aborts > self.max_aborts:
            raise RolloutError(f"{request.label}: aborted {aborts} times (last by {server}: "
                               f"{abort_message(answer)})")
        log.debug("%s aborted by %s (%s); resubmitting", request.label, server, abort_message(answer))

    async def _generate(self, request: SampleRequest, params: dict, attempts: int
                        ) -> tuple[list[dict], str, float, int]:
        """POST /generate until an answer arrives: returns (answers, server URL, latency, requests sent)."""
        failures, avoid = 0, None
        while True:
            await self._open.wait()
            async with self._slots:
                await self._open.wait()  # a sync may have started while this waited for a slot
                server = self._pick(avoid)
                body = {"input_ids": list(request.prompt_ids), "sampling_params": params, "return_logprob": True}
                rid = None
                if params.get("n", 1) == 1:  # SGLang versions differ in how they expand one rid over n samples
                    rid = body["rid"] = f"{self._rid_prefix}-{request.key}-{request.index}-{attempts + failures + 1}"
                start = time.perf_counter()
                try:
                    answers = await self._post_generate(server, body, rid, params.get("n", 1))
                    server.failures = 0
                    return answers, server.url, time.perf_counter() - start, failures + 1
                except _Retryable as e:
                    failures += 1
                    error = e
                except _Rejected as e:
                    raise RolloutError(f"{request.label}: {e}") from None
                finally:
                    server.inflight -= 1
            if failures > self.retries:
                raise RolloutError(f"{request.label}: gave up after {failures} failed attempts; last on "
                                   f"{server.url}: {error}") from error
            delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
            server.failures += 1  # a dead server stays avoided by every sample, not just this one
            server.down_until = time.monotonic() + min(self.max_backoff, self.backoff * 2 ** min(server.failures - 1, 30))
            avoid = server
            log.info("%s: %s failed (%s); retrying in %.1fs", request.label, server.url, error, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: restarted servers are not stampeded

    def _pick(self, avoid: _Server | None) -> _Server:
        now = time.monotonic()
        up = [s for s in self._servers if s.down_until <= now] or list(self._servers)
        if avoid in up and len(up) > 1:
            up.remove(avoid)
        least = min(s.inflight for s in up)
        server = random.choice([s for s in up if s.inflight == least])
        server.inflight += 1
        return server

    async def _post_generate(self, server: _Server, body: dict, rid: str | None, n: int) -> list[dict]:
        if self._http.is_closed:  # httpx would raise a bare RuntimeError
            raise _Rejected("the client was closed")
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.post(f"{server.url}/generate", json=body)
        except (TimeoutError, httpx.TimeoutException):
            if rid:
                self._in_background(self._abort(server.url, rid))  # free the server's slot for the retry
            raise _Retryable(f"no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as e:  # no connection, a dropped or undecodable body
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code != 200:
            raise _Rejected(f"{server.url}/generate answered HTTP {response.status_code}: {response.text[:500]}")
        try:
            answer = response.json()
            answers = answer if isinstance(answer, list) else [answer]
            if not all(isinstance(a, dict) for a in answers):
                raise BadAnswer(f"expected {n} answer object(s), got {str(answer)[:200]}")
            if len(answers) != n:  # whole JSON, not a cut answer: the next try would answer the same
                advice = ": it does not honour n; draw groups as n requests (use_n=False)" if n > 1 else ""
                raise _Rejected(f"{server.url}/generate answered {len(answers)} completion(s) for sampling "
                                f"n={n}{advice}")
            for a in answers:
                if finish_type(a) != "abort":
                    output_tokens(a)  # NaN logprobs, missing triples: the next try may be sound
        except ValueError as e:  # JSON errors and BadAnswer: the answer was cut or garbled
            raise _Retryable(f"malformed answer: {e}") from None
        return answers

    async def _abort(self, url: str, rid: str) -> None:
        with suppress(httpx.HTTPError):
            await self._control.post(f"{url}/abort_request", json={"rid": rid}, timeout=10.0)

    def _in_background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- weight sync ----

    async def sync_weights(self, model_path: str | os.PathLike, version: str | int, *,
                           flush_timeout: float = 120.0) -> dict[str, str]:
        """Load the Hugging Face folder `model_path` on every sync server: pause_generation (abort) ->
        flush_cache (retried with backoff while requests drain, up to flush_timeout s) ->
        update_weights_from_disk {model_path, weight_version} -> continue_generation. While it runs this
        client sends nothing new; aborted samples are resubmitted after it. Returns {url: confirmed version}
        (read back from /get_weight_version); raises WeightSyncError naming every server that refused."""
        version = str(version)
        path = os.path.abspath(os.fspath(model_path))
        async with self._sync_lock:
            self._open.clear()
            try:
                results = await asyncio.gather(*(self._sync_one(url, path, version, flush_timeout)
                                                 for url in self.sync_urls), return_exceptions=True)
            finally:
                self._open.set()
        failures = {url: str(r) for url, r in zip(self.sync_urls, results) if isinstance(r, BaseException)}
        confirmed = {url: r for url, r in zip(self.sync_urls, results) if not isinstance(r, BaseException)}
        if failures:
            raise WeightSyncError(version, failures, confirmed)
        self.weight_version = version
        return confirmed

    async def servers_off_version(self, version: str | int) -> list[str]:
        """The sync servers that answer a weight_version other than `version` (one restarted on its
        original weights, say); a server that does not answer now is not counted."""
        async def reported(url: str):
            with suppress(RuntimeError):
                return await self._weight_version(url, timeout=10.0)
            return str(version)
        answers = await asyncio.gather(*(reported(url) for url in self.sync_urls))
        return [url for url, v in zip(self.sync_urls, answers) if v != str(version)]

    async def _sync_one(self, url: str, path: str, version: str, flush_timeout: float) -> str:
        await self._control_call(url, "pause_generation", {"mode": "abort"})
        try:
            reported = await self._load(url, path, version, flush_timeout)
        except BaseException:
            with suppress(RuntimeError):  # the old weights keep serving; the load's error is the one to report
                await self._control_call(url, "continue_generation", {})
            raise
        await self._control_call(url, "continue_generation", {})
        return reported

    async def _load(self, url: str, path: str, version: str, flush_timeout: float) -> str:
        await self._flush(url, flush_timeout)
        # SGLang answers a refused load with HTTP 400 and {"success": false, "message": why}
        result = await self._control_call(url, "update_weights_from_disk",
                                          {"model_path": path, "weight_version": version}, timeout=self.timeout,
                                          check=False)
        if not (isinstance(result, dict) and result.get("success") is True):
            message = result.get("message") if isinstance(result, dict) else result
            raise RuntimeError(f"update_weights_from_disk refused {path}: {message}")
        reported = await self._weight_version(url)
        if reported != version:
            raise RuntimeError(f"loaded {path} but reports weight_version {reported!r}, not {version!r}")
        return reported

    async def _weight_version(self, url: str, timeout: float = 60.0) -> str:
        answer = await self._control_call(url, "get_weight_version", method="GET", timeout=timeout)
        return str(answer.get("weight_version") if isinstance(answer, dict) else answer)

    async def _flush(self, url: str, flush_timeout: float) -> None:
        """flush_cache answers 400 while requests are still pending; retry until they drain."""
        deadline, delay = time.monotonic() + flush_timeout, 0.05
        while True:
            try:  # each try bounded by what is left, so a hanging flush_cache cannot outlast flush_timeout
                response = await self._control.post(f"{url}/flush_cache",
                                                    timeout=max(0.05, deadline - time.monotonic()))
                if response.status_code == 200:
                    return
                why = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"flush_cache did not succeed within {flush_timeout:g}s (last: {why})")
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _control_call(self, url: str, endpoint: str, body: dict | None = None, *, method: str = "POST",
                            timeout: float = 60.0, check: bool = True) -> Any:
        """The answer's JSON (or text); RuntimeError on no answer, or on a non-200 answer when `check`."""
        try:
            response = await self._control.request(method, f"{url}/{endpoint}", json=body, timeout=timeout)
        except httpx.HTTPError as e:
            raise RuntimeError(f"{endpoint}: {type(e).__name__}: {e}") from None
        if check and response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            return f"HTTP {response.status_code}: {response.text[:300]}"


async def _all(coros: Iterable) -> list:
    """Run coroutines concurrently and return their results in order; the first failure cancels the rest."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_healthy(urls: str | Sequence[str], timeout: float = 600.0, *, api_key: str | None = None,
                       interval: float = 1.0) -> None:
    """Poll GET /health_generate (a real one-token generation) on every server until all answer 200;
    TimeoutError names each server still failing and why."""
    pending = {url: "not polled yet" for url in _urls(urls, "wait_healthy")}
    deadline = time.monotonic() + timeout

    async def poll(http: httpx.AsyncClient, url: str) -> None:
        try:  # bounded by the deadline: a server that accepts and never answers cannot outlast the timeout
            response = await http.get(f"{url}/health_generate",
                                      timeout=max(0.05, min(30.0, deadline - time.monotonic())))
            if response.status_code == 200:
                del pending[url]
            else:
                pending[url] = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as e:
            pending[url] = f"{type(e).__name__}: {e}"

    async with httpx.AsyncClient(headers=_headers(api_key)) as http:
        while pending:
            await asyncio.gather(*(poll(http, url) for url in list(pending)))  # all at once, not one by one
            if pending:
                if time.monotonic() + interval > deadline:
                    raise TimeoutError(f"servers not healthy after {timeout:g}s: "
                                       + "; ".join(f"{u} ({why})" for u, why in pending.items()))
                await asyncio.sleep(interval)
