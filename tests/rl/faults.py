"""A fault-injecting HTTP proxy for rollout tests.

Real HTTP on 127.0.0.1 (uvicorn in a thread): every request is forwarded to a real upstream server and its
answer passed back, except for the faults scripted with `inject`, taken in order by requests to the chosen
path:
- "500": answer HTTP 500 without forwarding;
- "stall": forward, then hold the (real) answer for `seconds` before sending it;
- "drop": forward, then send the status line and half the body and close the connection;
- "nan": forward, then answer with every output logprob replaced by NaN (a server with NaN weights);
- "one": forward, then answer the first completion of a list alone (a server that ignores sampling n).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass

import httpx
import uvicorn

FAULTS = ("500", "stall", "drop", "nan", "one")
HOP_HEADERS = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


class DroppedConnection(Exception):
    """Raised after a partial answer: uvicorn then closes the connection, as a crashed server would."""


@dataclass
class Seen:
    path: str
    rid: str | None
    fault: str | None
    authorization: str | None


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.seen: list[Seen] = []
        self.inflight = self.max_inflight = 0  # requests being answered now / at most at once
        self._faults: deque[tuple[str, str, float]] = deque()
        self._lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None
        # log_level critical: a "drop" ends its handler with an exception on purpose
        config = uvicorn.Config(self._app, host="127.0.0.1", port=0, log_level="critical", lifespan="off",
                                interface="asgi3", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("FaultProxy: uvicorn did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def inject(self, fault: str, count: int = 1, *, path: str = "/generate", seconds: float = 5.0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        with self._lock:
            self._faults.extend([(fault, path, seconds)] * count)

    def injected(self, fault: str) -> int:
        return sum(s.fault == fault for s in self.seen)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take(self, path: str) -> tuple[str | None, float]:
        with self._lock:
            if self._faults and self._faults[0][1] == path:
                fault, _, seconds = self._faults.popleft()
                return fault, seconds
        return None, 0.0

    async def _app(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        fault, seconds = self._take(path)
        self.seen.append(Seen(path, _rid(body), fault, dict(scope["headers"]).get(b"authorization", b"").decode()))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await self._forward(scope, body, send, fault, seconds)
        finally:
            self.inflight -= 1

    async def _forward(self, scope, body: bytes, send, fault: str | None, seconds: float) -> None:
        path = scope["path"]
        if fault == "500":
            return await _answer(send, 500, b'{"error": "injected fault"}', [(b"content-type", b"application/json")])
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=None)
        query = scope["query_string"].decode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_HEADERS]
        try:
            upstream = await self._http.request(scope["method"], self.upstream + path + (f"?{query}" if query else ""),
                                                content=body, headers=headers)
        except httpx.TransportError as e:
            return await _answer(send, 502, json.dumps({"error": f"upstream: {e!r}"}).encode(), [])
        answer_headers = [(k.encode(), v.encode()) for k, v in upstream.headers.items()
                          if k.lower().encode() not in HOP_HEADERS and k.lower() != "content-encoding"]
        if fault == "stall":
            await asyncio.sleep(seconds)
        if fault == "drop":
            await send({"type": "http.response.start", "status": upstream.status_code,
                        "headers": answer_headers + [(b"content-length", str(len(upstream.content)).encode())]})
            await send({"type": "http.response.body", "body": upstream.content[:len(upstream.content) // 2],
                        "more_body": True})
            raise DroppedConnection("injected fault")
        content = {"nan": _nan_logprobs, "one": _first_only}.get(fault, bytes)(upstream.content)
        await _answer(send, upstream.status_code, content, answer_headers)


async def _answer(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _nan_logprobs(content: bytes) -> bytes:
    answer = json.loads(content)
    for a in answer if isinstance(answer, list) else [answer]:
        for triple in a["meta_info"].get("output_token_logprobs", []):
            triple[0] = float("nan")
    return json.dumps(answer).encode()  # NaN written as Python's json writes it


def _first_only(content: bytes) -> bytes:
    answer = json.loads(content)
    return json.dumps(answer[0] if isinstance(answer, list) else answer).encode()


def _rid(body: bytes) -> str | None:
    try:
        rid = json.loads(body).get("rid")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) else None
