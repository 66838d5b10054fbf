"""The embedded SGLang-compatible server: SGLang's native HTTP API (and OpenAI's /v1, see openai_api.py)
on FastAPI, in front of the continuous-batching engine.

Clients written for SGLang (its own, Atropos's SGLang handler, slime-style /generate callers) work
unchanged: same paths, fields, answer shapes and status codes. Every input error is a 400 whose
message names the field (FastAPI's 422 is replaced); 500 is left for bugs.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import models
from models.sampler import SamplingParams
from rl.data.prompts import load_tokenizer
from rl.rollout.engine import Engine, Request
from rl.rollout.protocol import (GenerateCall, ModelLimits, RequestError, engine_requests, parse_generate,
                                 refuse_unknown, sglang_answer, unencodable)

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 20.0  # as SGLang's /health_generate


@dataclasses.dataclass
class ServerState:
    engine: Engine
    tokenizer: Any  # a transformers tokenizer, or None (input_ids only)
    limits: ModelLimits
    model_path: str
    served_model_name: str
    api_key: str | None = None
    server_args: dict = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.time)
    update_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    model_lock: "ModelLock" = dataclasses.field(default_factory=lambda: ModelLock())


class ModelLock:
    """SGLang's model_update_lock: generations read, a weight update writes. Unless generation is
    paused, an update waits for the generations in flight, and new ones wait behind it, so no
    completion mixes two weight versions."""

    def __init__(self):
        self._cond = asyncio.Condition()
        self._readers, self._writing = 0, False

    @contextlib.asynccontextmanager
    async def read(self):
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def write(self):
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing)
            self._writing = True
            try:
                await self._cond.wait_for(lambda: self._readers == 0)
            except BaseException:
                self._writing = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            async with self._cond:
                self._writing = False
                self._cond.notify_all()


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json(request: HttpRequest) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError("body", f"malformed JSON ({e})") from None
    except RecursionError:
        raise RequestError("body", "JSON nested too deeply") from None
    # A surrogate can only arrive as a JSON escape: walk the body only when the text holds one.
    where = unencodable(body) if _SURROGATE_ESCAPE.search(raw) else None
    if where is not None:
        raise RequestError(where, "holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode")
    return body


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    # SGLang's error shape, plus OpenAI's keys, so either kind of client finds a message.
    return SGLangJSONResponse({"error": {"message": message, "type": "BadRequestError" if status == 400 else "Error",
                                         "param": field, "code": status}, "object": "error", "message": message},
                              status_code=status)


def attach(requests: list[Request], stream: bool = False) -> asyncio.Queue:
    """Route the engine's per-request notifications (from its thread) into an asyncio queue of indices."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    for i, r in enumerate(requests):
        r.stream = stream
        r.on_update = lambda _, i=i: loop.call_soon_threadsafe(queue.put_nowait, i)
    return queue


async def run_all(state: ServerState, requests: list[Request], http: HttpRequest | None) -> None:
    """Submit and wait until every request finished; abort them if the client goes away."""
    queue = attach(requests)
    async with state.model_lock.read():
        state.engine.submit(requests)
        try:
            while not all(r.finish for r in requests):
                try:
                    await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    if http is not None and await http.is_disconnected():
                        break
        finally:
            for rid in {r.rid for r in requests if not r.finish}:
                state.engine.abort(rid, message="client disconnected")


async def stream_all(state: ServerState, requests: list[Request]) -> AsyncIterator[int]:
    """Submit and yield the index of each request as it gains a token or finishes. It ends once every
    request was yielded with its finish set: the engine sets finish before its last notification, so
    stopping when every finish is merely set could drop the last chunk still in flight."""
    queue = attach(requests, stream=True)
    async with state.model_lock.read():
        state.engine.submit(requests)
        ended = set()
        try:
            while len(ended) < len(requests):
                i = await queue.get()
                if requests[i].finish:
                    ended.add(i)
                yield i
        finally:
            for rid in {r.rid for r in requests if not r.finish}:
                state.engine.abort(rid, message="client disconnected")


def dumps(obj) -> str:
    """JSON as SGLang's orjson writes it: NaN and infinities (from NaN weights, say) become null."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class SGLangJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        # A lone surrogate (from a path on disk, say) is written as its JSON escape, not refused.
        return dumps(content).encode("utf-8", "backslashreplace")


def sse(obj) -> str:
    return f"data: {dumps(obj)}\n\n"


class BearerAuth:
    """--api-key: every path but /health needs `Authorization: Bearer KEY`. Plain ASGI: Starlette's
    @app.middleware("http") wraps the request so that a handler no longer sees the client go away
    (a non-streaming generation then ran to its end after a disconnect)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health" and \
                dict(scope["headers"]).get(b"authorization", b"") != self.expected:
            response = error_response(401, "missing or wrong 'Authorization: Bearer' API key")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(state: ServerState) -> FastAPI:
    from rl.rollout.openai_api import add_openai_routes

    app = FastAPI(title="coderl embedded SGLang-compatible server", default_response_class=SGLangJSONResponse)
    app.state.server = state

    @app.exception_handler(RequestError)
    async def bad_request(_, e: RequestError):
        return error_response(400, str(e), e.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, e: RequestValidationError):
        first = (e.errors() or [{}])[0]
        field = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return error_response(400, f"{field}: {first.get('msg', 'invalid request')}", field)

    if state.api_key:
        app.add_middleware(BearerAuth, api_key=state.api_key)

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate():
        r = Request([0], SamplingParams(max_new_tokens=1, temperature=0.0), rid="health-" + secrets.token_hex(8))
        try:
            await asyncio.wait_for(run_all(state, [r], None), HEALTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            return PlainTextResponse("health generation timed out", status_code=503)
        if (r.finish or {}).get("type") == "abort":
            return PlainTextResponse(f"health generation failed: {r.finish.get('message')}", status_code=503)
        return Response(status_code=200)

    @app.get("/get_model_info")
    async def get_model_info():
        cfg = state.engine.cfg
        return {"model_path": state.model_path, "tokenizer_path": state.model_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": state.engine.weight_version,
                "has_image_understanding": False, "has_audio_understanding": False, "model_type": cfg.arch,
                "architectures": [{"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[cfg.arch]]}

    @app.get("/get_server_info")
    async def get_server_info():
        e = state.engine
        return {**state.server_args, "model_path": state.model_path, "tokenizer_path": state.model_path,
                "served_model_name": state.served_model_name, "version": "coderl-embedded",
                "weight_version": e.weight_version,
                "max_running_requests": e.slots, "context_length": e.context_length,
                "max_total_num_tokens": e.slots * e.context_length, "paused": e.paused,
                "internal_states": [{"pending_requests": e.pending(), "decode_steps": e.steps}],
                "uptime_s": round(time.time() - state.started, 3)}

    @app.get("/get_weight_version")
    async def get_weight_version():
        return {"weight_version": state.engine.weight_version}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        if state.engine.flush():
            return PlainTextResponse("Cache flushed.\n", status_code=200)
        return PlainTextResponse(f"Cache not flushed: {state.engine.pending()} requests are running or waiting.\n",
                                 status_code=400)

    @app.post("/pause_generation")
    async def pause_generation(request: HttpRequest):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError("body", "must be a JSON object")
        refuse_unknown(body, {"mode"}, "")
        mode = body.get("mode", "abort")
        if mode not in ("abort", "retract", "in_place"):
            raise RequestError("mode", f"{json.dumps(mode)}: expected 'abort', 'retract' or 'in_place'")
        state.engine.pause(mode)
        return {"message": "Generation paused successfully.", "status": "ok"}

    @app.post("/continue_generation")
    async def continue_generation(request: HttpRequest):
        await read_json(request)
        state.engine.resume()
        return {"message": "Generation continued successfully.", "status": "ok"}

    @app.post("/abort_request")
    async def abort_request(request: HttpRequest):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError("body", "must be a JSON object")
        refuse_unknown(body, {"rid", "abort_all", "finished_reason", "abort_message"}, "")
        rid, abort_all = body.get("rid", ""), body.get("abort_all", False)
        if not isinstance(rid, str):
            raise RequestError("rid", "must be a string")
        if not isinstance(abort_all, bool):
            raise RequestError("abort_all", "must be true or false")
        if not rid and not abort_all:
            raise RequestError("rid", "give a rid or abort_all: true")
        n = state.engine.abort(rid, abort_all=abort_all, prefix=True)
        return {"success": True, "aborted": n}

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: HttpRequest):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError("body", "must be a JSON object")
        refuse_unknown(body, {"model_path", "load_format", "abort_all_requests", "weight_version", "is_async",
                              "torch_empty_cache", "keep_pause", "flush_cache", "recapture_cuda_graph",
                              "token_step"}, "")
        path, version = body.get("model_path"), body.get("weight_version")
        if not isinstance(path, str) or not path:
            raise RequestError("model_path", "must be a model folder path")
        if version is not None and (not isinstance(version, (str, int)) or isinstance(version, bool)):
            raise RequestError("weight_version", "must be a string")
        if not isinstance(body.get("abort_all_requests", False), bool):
            raise RequestError("abort_all_requests", "must be true or false")
        async with state.update_lock:
            if body.get("abort_all_requests"):
                state.engine.abort(abort_all=True, message="Aborted by update_weights_from_disk")
            try:
                cfg, params = await asyncio.to_thread(_load, path, state.engine.cfg)
                # As SGLang: paused, the swap is immediate (the caller chose what happens to requests
                # in flight); otherwise it waits for them to finish.
                async with contextlib.nullcontext() if state.engine.paused else state.model_lock.write():
                    await asyncio.to_thread(state.engine.set_weights, params, cfg,
                                            state.engine.weight_version if version is None else str(version))
            except (ValueError, OSError) as e:  # CheckpointError / ConfigError are ValueErrors
                return SGLangJSONResponse({"success": False, "message": f"Failed to update weights from {path}: {e}",
                                           "num_paused_requests": 0}, status_code=400)
        state.model_path = path
        return {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: HttpRequest):
        call = parse_generate(await read_json(request), state.limits, state.tokenizer)
        flat = _expand(state, call)
        requests = [r for _, r in flat]
        if call.stream:
            return StreamingResponse(_stream_generate(state, call, flat), media_type="text/event-stream")
        await run_all(state, requests, request)
        inputs = {id(p): await _input_logprobs(state, p) for p in call.prompts}
        answers = [sglang_answer(r, p, call, state.tokenizer, inputs[id(p)]) for p, r in flat]
        return SGLangJSONResponse(answers if call.batch else answers[0])

    add_openai_routes(app, state)
    return app


def _load(path: str, cfg: models.ModelConfig):
    """A checkpoint folder in the served model's dtypes, checked against its architecture."""
    if not Path(path).is_dir():
        raise ValueError(f"{path}: not a folder")
    new_cfg, params = models.load_hf(path, cfg.param_dtype, compute_dtype=cfg.dtype, remat=cfg.remat,
                                     attention=cfg.attention)
    return new_cfg, params


def _expand(state: ServerState, call: GenerateCall) -> list[tuple[Any, Request]]:
    tok = state.tokenizer
    flat = []
    for p in call.prompts:
        if p.sampling.stop_strings and tok is None:
            raise RequestError("sampling_params.stop", "stop strings need the model folder's tokenizer")
        flat += [(p, r) for r in engine_requests(p, _text_with_specials(tok), None, call.stream)]
    return flat


def _text_with_specials(tok):
    """What stop strings are matched against: SGLang decodes the tail with special tokens kept, so
    "<|im_end|>" can be a stop string whatever skip_special_tokens says about the answer's text."""
    return None if tok is None else (lambda ids: tok.decode(ids, skip_special_tokens=False))


async def _input_logprobs(state: ServerState, p) -> tuple[list, list | None] | None:
    """SGLang's input_token_logprobs, (logprob, id) from prompt token logprob_start_len on (the first
    prompt token has none), and with top_logprobs_num its input_top_logprobs, per position (None at the
    first prompt token); both empty at the default logprob_start_len -1."""
    if not p.return_logprob:
        return None
    if p.logprob_start_len < 0:
        return [], [] if p.top_logprobs_num else None
    values, top = await asyncio.to_thread(state.engine.prompt_logprobs, p.ids, p.sampling.params.temperature,
                                          p.top_logprobs_num)
    positions = range(p.logprob_start_len, len(p.ids))
    tokens = [(None if t == 0 else values[t - 1], p.ids[t]) for t in positions]
    return tokens, None if top is None else [None if t == 0 else top[t - 1] for t in positions]


async def _stream_generate(state: ServerState, call: GenerateCall, flat) -> AsyncIterator[str]:
    requests = [r for _, r in flat]
    sent = [(-1, None)] * len(flat)
    async for i in stream_all(state, requests):
        p, r = flat[i]
        if sent[i] == (len(r.logprobs), r.finish):  # several notifications read one state: send it once
            continue
        sent[i] = (len(r.logprobs), r.finish)
        chunk = sglang_answer(r, p, call, state.tokenizer)
        if call.batch:
            chunk["index"] = i
        yield sse(chunk)
    yield "data: [DONE]\n\n"


def eos_token_ids(model_dir: Path, cfg: models.ModelConfig, tokenizer) -> tuple[int, ...]:
    """The ids a completion stops on unless ignore_eos: config.json's, generation_config.json's and the
    tokenizer's EOS, as SGLang gathers them."""
    found = [json.loads(v) for k, v in cfg.hf_extra if k == "eos_token_id"]
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        try:
            found.append(json.loads(gen.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, AttributeError) as e:
            raise models.ConfigError(f"{gen}: not a JSON object ({e})") from None
    if tokenizer is not None:
        found.append(tokenizer.eos_token_id)
    ids = []
    for x in found:
        ids += x if isinstance(x, list) else [x]
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int) and 0 <= i < cfg.vocab_size))


def load_state(model_dir, *, slots: int = 32, context_length: int | None = None, dtype: str = "auto",
               served_model_name: str | None = None, weight_version: str = "default", api_key: str | None = None,
               server_args: dict | None = None) -> ServerState:
    """Load the folder (weights, tokenizer if any) and start the engine on it."""
    model_dir = Path(model_dir)
    cfg, params = models.load_hf(model_dir, None if dtype == "auto" else dtype, remat="none")
    try:  # a folder without tokenizer files got an empty tokenizer from transformers, not an error
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        log.warning("%s: no usable tokenizer (%s); serving input_ids only", model_dir, e)
        tokenizer = None
    context_length = context_length or cfg.max_position_embeddings
    limits = ModelLimits(cfg.vocab_size, context_length, eos_token_ids(model_dir, cfg, tokenizer))
    engine = Engine(params, cfg, slots=slots, context_length=context_length, weight_version=weight_version)
    return ServerState(engine, tokenizer, limits, str(model_dir), served_model_name or str(model_dir), api_key,
                       server_args or {})


def warm_up(engine: Engine) -> None:
    """Compile the prefill and step programs of greedy and sampled decoding before the first request."""
    import threading

    done = threading.Semaphore(0)
    requests = [Request([0, 1], SamplingParams(max_new_tokens=3, temperature=t), rid="warmup",
                        on_update=lambda r: r.finish and done.release()) for t in (0.0, 1.0)]
    for r in requests:
        engine.submit([r])
        done.acquire()


def serve_embedded(args) -> int:
    """`python -m rl.serve` with the embedded engine: load, warm up, serve until SIGINT / SIGTERM."""
    import socket
    import sys

    import uvicorn

    try:
        sockets = None if args.fd is None else [socket.socket(fileno=args.fd)]
    except OSError as e:  # not open, or not a socket
        print(f"error: --fd {args.fd}: {e}", file=sys.stderr)
        return 2
    try:
        state = load_state(args.model, slots=args.max_running_requests, context_length=args.context_length,
                           dtype=args.dtype, served_model_name=args.served_model_name,
                           weight_version=args.weight_version, api_key=args.api_key,
                           server_args={k: v for k, v in vars(args).items() if k != "api_key"})
    except (ValueError, OSError) as e:  # ConfigError and CheckpointError name the file at fault
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if not args.skip_warmup:
            warm_up(state.engine)
        server = uvicorn.Server(uvicorn.Config(create_app(state), host=args.host, port=args.port,
                                              log_level=args.log_level))
        server.run(sockets=sockets)
    finally:
        state.engine.close()
    return 0
