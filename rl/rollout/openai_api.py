"""OpenAI-compatible /v1/models, /v1/completions and /v1/chat/completions on the embedded engine.

Atropos's SGLang handler probes these with max_tokens 1 about once a second and marks the server dead
on one failure, so they run on the same engine as /generate (one-token requests need no decode slot:
a probe is answered by a prefill even when every slot is busy). Chat prompts are rendered with the
model folder's own chat template.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import StreamingResponse

from rl.rollout.engine import TOP_LOGPROBS_MAX, Request
from rl.rollout.protocol import (RequestError, Sampling, check_length, encode_texts, output_text, refuse_unknown,
                                 refuse_unsupported, sampling_from, token_ids)

COMMON_KEYS = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options", "user",
               "top_k", "min_p", "stop_token_ids", "ignore_eos", "skip_special_tokens", "no_stop_trim",
               "spaces_between_special_tokens", "rid"}
NEUTRAL = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "logit_bias": ({},),
           "min_tokens": 0, "response_format": ({"type": "text"},), "tools": ({}, []), "suffix": None,
           "echo": False, "regex": None, "json_schema": None, "ebnf": None}
ROLES = {"system", "user", "assistant", "tool", "function"}  # the roles SGLang's chat messages take
COMPLETION_KEYS = COMMON_KEYS | {"prompt", "logprobs", "best_of"}
CHAT_KEYS = COMMON_KEYS | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "tool_choice",
                           "parallel_tool_calls", "chat_template_kwargs", "continue_final_message",
                           "add_generation_prompt", "reasoning_effort", "separate_reasoning"}


def add_openai_routes(app: FastAPI, state) -> None:
    from rl.rollout.server import (SGLangJSONResponse, _text_with_specials, error_response, read_json, run_all, sse,
                                   stream_all)

    def card():
        return {"id": state.served_model_name, "object": "model", "created": int(state.started), "owned_by": "coderl",
                "root": state.model_path, "max_model_len": state.limits.context_length}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str):
        if model != state.served_model_name:
            return error_response(404, f"The model '{model}' does not exist", "model")
        return card()

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        body = _object(await read_json(request))
        refuse_unsupported(body, NEUTRAL, "")
        refuse_unknown(body, COMPLETION_KEYS | set(NEUTRAL), "")
        prompts = _completion_prompts(body.get("prompt"), state)
        best_of = body.get("best_of")
        if best_of is not None and best_of != body.get("n", 1):
            raise RequestError("best_of", "only best_of == n is supported")
        top = _top(body.get("logprobs"), "logprobs", TOP_LOGPROBS_MAX)
        s = _sampling(body, state, default_max_tokens=16)  # OpenAI's completions default
        return await _respond(state, request, body, prompts, s, top, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        body = _object(await read_json(request))
        refuse_unsupported(body, NEUTRAL, "")
        refuse_unknown(body, CHAT_KEYS | set(NEUTRAL), "")
        if state.tokenizer is None or not getattr(state.tokenizer, "chat_template", None):
            raise RequestError("messages", "this model folder has no tokenizer chat template")
        messages = _messages(body.get("messages"))
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RequestError("chat_template_kwargs", "must be an object")
        switches = {key: body.get(key, default) for key, default in (("add_generation_prompt", True),
                                                                     ("continue_final_message", False))}
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise RequestError(key, "must be true or false")
        try:
            ids = state.tokenizer.apply_chat_template(messages, tokenize=True, **switches, **kwargs)
        except Exception as e:  # a template that cannot render these messages is the request's fault
            raise RequestError("messages", f"the chat template cannot render them ({e})") from None
        if hasattr(ids, "keys"):  # transformers >= 5 answers a BatchEncoding
            ids = ids["input_ids"]
        wants = body.get("logprobs")
        if wants is not None and not isinstance(wants, bool):
            raise RequestError("logprobs", "must be true or false")
        top = _top(body.get("top_logprobs"), "top_logprobs", TOP_LOGPROBS_MAX) if wants else None
        # max_completion_tokens replaced the deprecated max_tokens; as vLLM and SGLang, it wins when both are given.
        max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        if max_key != "max_tokens" and body.get("max_tokens") is not None:
            _sampling(body, state, default_max_tokens=None)  # still refuse a malformed max_tokens
        s = _sampling(body, state, default_max_tokens=None, max_key=max_key)  # as SGLang: up to the context
        return await _respond(state, request, body, [list(ids)], s, top, chat=True)

    async def _respond(state, request, body, prompts, s: Sampling, top, chat: bool):
        per_prompt = [check_length(ids, s, "messages" if chat else "prompt", state.limits) for ids in prompts]
        if s.stop_strings and state.tokenizer is None:
            raise RequestError("stop", "stop strings need the model folder's tokenizer")
        tok = state.tokenizer
        for key in ("rid", "model", "user"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise RequestError(key, f"must be a string, got {json.dumps(body[key])[:100]}")
        rid = body.get("rid") or secrets.token_hex(12)
        requests = [Request(ids, p.params, rid=rid, sample_index=j, stop_strings=s.stop_strings,
                            text_of=_text_with_specials(tok),
                            top_logprobs=top or 0)
                    for ids, p in zip(prompts, per_prompt) for j in range(s.n)]
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("stream", "must be true or false")
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + rid, "created": int(time.time()),
                "model": body.get("model") or state.served_model_name}
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise RequestError("stream_options", 'must be an object like {"include_usage": true}')
        if stream:
            usage = sum(len(p) for p in prompts) if options.get("include_usage") else None
            return StreamingResponse(_stream(state, requests, s, top, chat, meta, usage),
                                     media_type="text/event-stream")
        await run_all(state, requests, request)
        choices = [_choice(i, r, s, top, chat, tok) for i, r in enumerate(requests)]
        completion = sum(len(r.output_ids) for r in requests)
        prompt = sum(len(p) for p in prompts)
        return SGLangJSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                                   "choices": choices, "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                                 "total_tokens": prompt + completion}})

    async def _stream(state, requests, s, top, chat, meta, prompt_tokens):
        """One chunk per new token of a choice, with its logprobs when asked; then, with
        stream_options.include_usage, a last chunk with no choices and the usage."""
        tok, sent = state.tokenizer, [""] * len(requests)
        tokens_sent, pieces_len = [0] * len(requests), [0] * len(requests)
        kind = "chat.completion.chunk" if chat else "text_completion"
        async for i in stream_all(state, requests):
            r = requests[i]
            text = output_text(r, s, tok) if r.finish else \
                tok.decode(r.output_ids, skip_special_tokens=s.skip_special_tokens).rstrip("\ufffd")
            delta, sent[i] = text[len(sent[i]):], text
            end = len(r.logprobs)
            logprobs = _logprobs(r, top, chat, tok, tokens_sent[i], end, pieces_len[i])
            if logprobs is not None and not chat:
                pieces_len[i] += sum(len(p) for p in logprobs["tokens"])
            tokens_sent[i] = end
            choice = {"index": i, "finish_reason": _finish_reason(r) if r.finish else None, "logprobs": logprobs}
            if chat:
                choice["delta"] = {"role": "assistant", "content": delta}
            else:
                choice["text"] = delta
            yield sse({**meta, "object": kind, "choices": [choice]})
        if prompt_tokens is not None:
            completion = sum(len(r.output_ids) for r in requests)
            yield sse({**meta, "object": kind, "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}})
        yield "data: [DONE]\n\n"


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    return body


def _sampling(body: dict, state, default_max_tokens: int | None, max_key: str = "max_tokens") -> Sampling:
    return sampling_from(body, "", state.limits, max_new_key=max_key, max_new_default=default_max_tokens,
                         seed_key="seed")


def _top(x, field: str, high: int) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= high:
        raise RequestError(field, f"{json.dumps(x)}: must be an integer in [0, {high}]")
    return x


def _completion_prompts(x, state) -> list[list[int]]:
    """prompt: a string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(x, str) or (isinstance(x, list) and x and all(isinstance(p, str) for p in x)):
        return encode_texts(x, "prompt", state.tokenizer, "token ids")
    if isinstance(x, list) and x and all(isinstance(p, list) for p in x):
        return [token_ids(p, f"prompt[{i}]", state.limits) for i, p in enumerate(x)]
    if isinstance(x, list):
        return [token_ids(x, "prompt", state.limits)]
    raise RequestError("prompt", "must be a string, a list of strings or a list of token ids")


def _messages(x) -> list[dict]:
    if not isinstance(x, list) or not x:
        raise RequestError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(x):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}]", "must be an object with a string 'role'")
        role = m["role"].lower()  # as SGLang, which lower-cases roles before it checks them
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role", f"{json.dumps(m['role'])}: expected one of {sorted(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content", "must be a string or a list of text parts")
        out.append({**m, "role": role, "content": content})
    return out


def _finish_reason(r: Request) -> str:
    return r.finish["type"]


def _choice(i: int, r: Request, s: Sampling, top, chat: bool, tok) -> dict:
    text = output_text(r, s, tok)
    choice = {"index": i, "finish_reason": _finish_reason(r), "matched_stop": r.finish.get("matched")}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = _logprobs(r, top, chat, tok, 0, len(r.logprobs))
    return choice


def _logprobs(r: Request, top, chat: bool, tok, start: int, end: int, offset: int = 0) -> dict | None:
    """OpenAI's logprobs of output tokens [start, end) (a streamed chunk's, or all); `offset`: the
    text length before token `start`, where completions' text_offset counts from."""
    if top is None:
        return None
    pieces = [tok.decode([t]) if tok is not None else str(t) for t in r.output_ids[start:end]]
    lps = r.logprobs[start:end]
    tops = r.top[start:end] if top else [[] for _ in pieces]
    if chat:
        return {"content": [
            {"token": piece, "logprob": lp, "bytes": list(piece.encode()),
             "top_logprobs": [{"token": tok.decode([t]), "logprob": v, "bytes": list(tok.decode([t]).encode())}
                              for v, t in step]}
            for piece, lp, step in zip(pieces, lps, tops)]}
    offsets = []
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": pieces, "token_logprobs": lps, "text_offset": offsets,
            "top_logprobs": [{tok.decode([t]) if tok is not None else str(t): v for v, t in step} for step in tops]}
