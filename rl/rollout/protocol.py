"""SGLang's native request and answer formats, and the checks that turn bad input into a 400 naming the field.

`parse_generate` reads a /generate body into engine requests; `sglang_answer` writes one finished (or
streaming) request back in SGLang's shape. The OpenAI endpoints reuse `sampling_from` for their own
field names. Fields SGLang accepts but this server cannot honour are refused by name unless they
hold their neutral value, so a client never silently gets something other than what it asked for.
"""
from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from typing import Any

from models.sampler import SamplingParams
from rl.rollout.engine import TOP_LOGPROBS_MAX, Request

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default
MAX_N = 1024


class RequestError(ValueError):
    """Bad input: answered with HTTP 400 and a message that names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """What input is checked against."""
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]


# ---- typed field readers ------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(d: dict, key: str, field: str, default: float, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    x = d.get(key)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RequestError(field, f"must be a number, got {json.dumps(x)}")
    try:
        x = float(x)  # an integer past float's range (JSON has no limit) overflows
    except OverflowError:
        raise RequestError(field, "is not a finite number") from None
    if not math.isfinite(x):  # Python's JSON reader takes NaN and Infinity; SGLang refuses them
        raise RequestError(field, f"{x} is not a finite number")
    if (low is not None and (x <= low if low_open else x < low)) or (high is not None and x > high):
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise RequestError(field, f"{x} is outside {bounds}")
    return x


def _int(d: dict, key: str, field: str, default: int | None, low: int | None = None, high: int | None = None):
    x = d.get(key)
    if x is None:
        return default
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not _is_int(x):
        raise RequestError(field, f"must be an integer, got {json.dumps(x)}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise RequestError(field, f"{x} is outside [{low}, {high if high is not None else 'inf'}]")
    return x


def _bool(d: dict, key: str, field: str, default: bool) -> bool:
    x = d.get(key)
    if x is None:
        return default
    if not isinstance(x, bool):
        raise RequestError(field, f"must be true or false, got {json.dumps(x)}")
    return x


def _strings(x, field: str) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, list) or not all(isinstance(s, str) and s for s in x):
        raise RequestError(field, "must be a non-empty string or a list of non-empty strings")
    return tuple(x)


def encode_texts(x, field: str, tokenizer, instead: str) -> list[list[int]]:
    """Token ids of one or several prompt texts, each non-empty and encoding to at least one token.
    `instead`: the field to send when the folder has no tokenizer."""
    if tokenizer is None:
        raise RequestError(field, f"this model folder has no tokenizer: send {instead}")
    items = x if isinstance(x, list) else [x]
    if not items or not all(isinstance(t, str) and t for t in items):
        raise RequestError(field, "must be a non-empty string or a list of non-empty strings")
    prompts = [tokenizer.encode(t) for t in items]
    for i, ids in enumerate(prompts):
        if not ids:
            raise RequestError(f"{field}[{i}]" if isinstance(x, list) else field, "encodes to no tokens")
    return prompts


def unencodable(body) -> str | None:
    """Where a parsed JSON body holds a string (key or value) that UTF-8 cannot encode: JSON allows
    lone surrogates, and an answer or error that echoed one could not be written."""
    stack = [(body, "")]
    while stack:
        x, path = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(x, dict):
            for k, v in x.items():
                key = k.encode("utf-8", "backslashreplace").decode("utf-8")
                stack += [(k, f"{path}.{key}".lstrip(".")), (v, f"{path}.{key}".lstrip("."))]
        elif isinstance(x, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(x)]
    return None


def token_ids(x, field: str, limits: ModelLimits, allow_empty: bool = False) -> list[int]:
    if not isinstance(x, list) or not all(_is_int(t) for t in x):
        raise RequestError(field, "must be a list of integer token ids")
    if not x and not allow_empty:
        raise RequestError(field, "is empty")
    bad = [t for t in x if not 0 <= t < limits.vocab_size]
    if bad:
        raise RequestError(field, f"token id {bad[0]} is outside [0, {limits.vocab_size})")
    return x


def refuse_unknown(d: dict, known: set[str], field: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise RequestError(f"{field}{unknown[0]}" if field else unknown[0], "unknown parameter")


def refuse_unsupported(d: dict, neutral: dict[str, Any], field: str) -> None:
    """Fields this server does not implement are accepted only at their neutral value."""
    for key, value in neutral.items():
        x = d.get(key)
        allowed = value if isinstance(value, tuple) else (value,)
        if x is not None and x not in allowed:
            raise RequestError(f"{field}{key}", f"{json.dumps(x)} is not supported by the embedded server "
                                                f"(only {json.dumps(allowed[0])})")


# ---- sampling -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sampling:
    """One prompt's sampling settings: what the engine needs, plus the answer-side switches."""
    params: SamplingParams
    n: int = 1
    stop_strings: tuple[str, ...] = ()
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    seeded: bool = False


SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids", "ignore_eos",
                 "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim", "sampling_seed", "n",
                 "stream_interval"}
SAMPLING_NEUTRAL = {"min_new_tokens": 0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
                    "json_schema": None, "regex": None, "ebnf": None, "structural_tag": None, "stop_regex": None,
                    "custom_params": None, "logit_bias": ({},)}


def sampling_from(d: dict, field: str, limits: ModelLimits, *, max_new_key: str = "max_new_tokens",
                  max_new_default: int | None = DEFAULT_MAX_NEW_TOKENS, seed_key: str = "sampling_seed") -> Sampling:
    """Read SGLang sampling params from d (field: the prefix used in error messages). A null max_new
    (and max_new_default None when it is absent) means: up to the context length (check_length sets it)."""
    max_new = None if max_new_key in d and d[max_new_key] is None else \
        _int(d, max_new_key, field + max_new_key, max_new_default, 0)
    temperature = _number(d, "temperature", field + "temperature", 1.0, 0.0)
    top_p = _number(d, "top_p", field + "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _int(d, "top_k", field + "top_k", -1)
    if top_k == 0 or top_k < -1:
        raise RequestError(field + "top_k", f"{top_k}: must be -1 (off) or >= 1")
    if top_k >= limits.vocab_size:  # every token: the same as off (and it fits the engine's int32)
        top_k = -1
    min_p = _number(d, "min_p", field + "min_p", 0.0, 0.0, 1.0)
    stop_ids = d.get("stop_token_ids")
    stop_ids = () if stop_ids is None else tuple(token_ids(stop_ids, field + "stop_token_ids", limits, True))
    ignore_eos = _bool(d, "ignore_eos", field + "ignore_eos", False)
    seed = _int(d, seed_key, field + seed_key, None)
    n = _int(d, "n", field + "n", 1, 1, MAX_N)
    _int(d, "stream_interval", field + "stream_interval", 1, 1)
    stops = tuple(dict.fromkeys(stop_ids + (() if ignore_eos else limits.eos_token_ids)))
    return Sampling(
        SamplingParams(max_new, temperature, top_p, top_k, stops, secrets.randbits(32) if seed is None else seed,
                       min_p),
        n=n, stop_strings=_strings(d.get("stop"), field + "stop"),
        skip_special_tokens=_bool(d, "skip_special_tokens", field + "skip_special_tokens", True),
        spaces_between_special_tokens=_bool(d, "spaces_between_special_tokens",
                                            field + "spaces_between_special_tokens", True),
        no_stop_trim=_bool(d, "no_stop_trim", field + "no_stop_trim", False), seeded=seed is not None)


def check_length(prompt: list[int], s: Sampling, field: str, limits: ModelLimits) -> Sampling:
    """s for this prompt: refused when prompt + max_new_tokens exceed the context, and a max_new_tokens
    of None (SGLang's null) set to what the context leaves."""
    if len(prompt) >= limits.context_length:
        raise RequestError(field, f"{len(prompt)} prompt tokens: the context length is {limits.context_length}")
    if s.params.max_new_tokens is None:
        params = dataclasses.replace(s.params, max_new_tokens=limits.context_length - len(prompt))
        return dataclasses.replace(s, params=params)
    if len(prompt) + s.params.max_new_tokens > limits.context_length:
        raise RequestError("max_new_tokens", f"{len(prompt)} prompt tokens + {s.params.max_new_tokens} new tokens "
                                             f"exceed the context length of {limits.context_length}")
    return s


# ---- /generate ----------------------------------------------------------------------------------------
GENERATE_KEYS = {"text", "input_ids", "sampling_params", "rid", "return_logprob", "logprob_start_len",
                 "top_logprobs_num", "return_text_in_logprobs", "stream", "log_metrics", "modalities",
                 "data_parallel_rank", "routed_dp_rank", "priority", "custom_labels", "no_logs", "extra_key",
                 "background", "conversation_id", "routing_key", "bootstrap_host", "bootstrap_port",
                 "bootstrap_room", "return_bytes"}
# The accepted fields this server has no use for, with their types: one value, or a list of them for a batch.
IGNORED_TYPES = {"log_metrics": bool, "no_logs": bool, "background": bool, "return_bytes": bool, "priority": int,
                 "data_parallel_rank": int, "routed_dp_rank": int, "bootstrap_port": int, "bootstrap_room": int,
                 "bootstrap_host": str, "extra_key": str, "conversation_id": str, "routing_key": str,
                 "modalities": list, "custom_labels": dict}
GENERATE_NEUTRAL = {"input_embeds": None, "image_data": None, "audio_data": None, "video_data": None,
                    "lora_path": None, "lora_id": None, "session_params": None, "custom_logit_processor": None,
                    "return_hidden_states": False, "token_ids_logprob": None, "return_entropy": False}


@dataclasses.dataclass
class Prompt:
    """One prompt of a /generate call and the answer switches that apply to it."""
    ids: list[int]
    sampling: Sampling
    rid: str
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int


@dataclasses.dataclass
class GenerateCall:
    prompts: list[Prompt]
    batch: bool  # answer a list (a batch of prompts, or n > 1)
    stream: bool
    return_text_in_logprobs: bool


def _per_prompt(body: dict, key: str, count: int, batch: bool) -> list:
    """SGLang lets a batch give one value for all prompts or a list of per-prompt values."""
    x = body.get(key)
    if batch and isinstance(x, list):
        if len(x) != count:
            raise RequestError(key, f"has {len(x)} entries for {count} prompts")
        return x
    return [x] * count


def _rids(x, count: int, batch: bool) -> list:
    """SGLang's rids: one string per prompt; a batch given one string gets "{rid}_{i}"."""
    if x is None or (isinstance(x, str) and not batch):
        return [x] * count
    if isinstance(x, str):
        return [f"{x}_{i}" for i in range(count)]
    if not batch or not isinstance(x, list) or not all(isinstance(r, str) for r in x):
        raise RequestError("rid", "must be a string (or a list of strings for a batch)")
    if len(x) != count:
        raise RequestError("rid", f"has {len(x)} entries for {count} prompts")
    if len(set(x)) != len(x):
        raise RequestError("rid", f"{json.dumps(next(r for r in x if x.count(r) > 1))} appears twice in the batch")
    return x


def _of_type(x, kind: type) -> bool:
    return x is None or (isinstance(x, kind) and not (kind is int and isinstance(x, bool)))


def parse_generate(body: Any, limits: ModelLimits, tokenizer) -> GenerateCall:
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    refuse_unsupported(body, GENERATE_NEUTRAL, "")
    refuse_unknown(body, GENERATE_KEYS | set(GENERATE_NEUTRAL), "")
    for key, kind in IGNORED_TYPES.items():
        x = body.get(key)
        if not (_of_type(x, kind) or (isinstance(x, list) and all(_of_type(v, kind) for v in x))):
            raise RequestError(key, f"must be a {kind.__name__} (or a list of them, one per prompt), "
                                    f"got {json.dumps(x)[:100]}")
    if (body.get("text") is None) == (body.get("input_ids") is None):
        raise RequestError("input_ids", "give exactly one of 'input_ids' and 'text'")
    if body.get("input_ids") is not None:
        x = body["input_ids"]
        batch = isinstance(x, list) and bool(x) and all(isinstance(p, list) for p in x)
        prompts = [token_ids(p, f"input_ids[{i}]", limits) for i, p in enumerate(x)] if batch else \
            [token_ids(x, "input_ids", limits)]
    else:
        x = body["text"]
        batch = isinstance(x, list)
        prompts = encode_texts(x, "text", tokenizer, "input_ids")
    count = len(prompts)
    sps = _per_prompt(body, "sampling_params", count, batch)
    rids = _rids(body.get("rid"), count, batch)
    ret_lp = _per_prompt(body, "return_logprob", count, batch)
    starts = _per_prompt(body, "logprob_start_len", count, batch)
    tops = _per_prompt(body, "top_logprobs_num", count, batch)
    out = []
    for i, ids in enumerate(prompts):
        sp = {} if sps[i] is None else sps[i]
        prefix = f"sampling_params[{i}]." if batch and isinstance(body.get("sampling_params"), list) else \
            "sampling_params."
        if not isinstance(sp, dict):
            raise RequestError(prefix.rstrip("."), "must be an object")
        refuse_unsupported(sp, SAMPLING_NEUTRAL, prefix)
        refuse_unknown(sp, SAMPLING_KEYS | set(SAMPLING_NEUTRAL), prefix)
        s = check_length(ids, sampling_from(sp, prefix, limits), "input_ids", limits)
        rid = rids[i]
        wrap = {"v": ret_lp[i]}
        return_logprob = _bool(wrap, "v", "return_logprob", False)
        wrap = {"v": starts[i]}
        start = _int(wrap, "v", "logprob_start_len", -1, -1)
        if start >= len(ids):
            raise RequestError("logprob_start_len", f"{start} is not below the prompt length {len(ids)}")
        wrap = {"v": tops[i]}
        top = _int(wrap, "v", "top_logprobs_num", 0, 0, TOP_LOGPROBS_MAX)
        out.append(Prompt(ids, s, rid or secrets.token_hex(16), return_logprob, start, top))
    if len({p.sampling.n for p in out}) > 1:
        raise RequestError("sampling_params", "n must be the same for every prompt of a batch")
    stream = _bool(body, "stream", "stream", False)
    text_in_lp = _bool(body, "return_text_in_logprobs", "return_text_in_logprobs", False)
    return GenerateCall(out, batch or any(p.sampling.n > 1 for p in out), stream, text_in_lp)


def engine_requests(p: Prompt, text_of, on_update, stream: bool) -> list[Request]:
    """The n samples of one prompt, in SGLang's answer order."""
    s = p.sampling
    return [Request(p.ids, s.params, rid=p.rid, sample_index=j, stop_strings=s.stop_strings,
                    text_of=text_of if s.stop_strings else None, top_logprobs=p.top_logprobs_num, stream=stream,
                    on_update=on_update) for j in range(s.n)]


def output_text(r: Request, s: Sampling, tokenizer) -> str:
    """The completion's text: SGLang trims a matched stop (token or string) unless no_stop_trim."""
    if tokenizer is None:
        return ""
    ids = r.output_ids
    matched = (r.finish or {}).get("matched")
    if _is_int(matched) and not s.no_stop_trim:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=s.skip_special_tokens,
                            spaces_between_special_tokens=s.spaces_between_special_tokens)
    if isinstance(matched, str) and not s.no_stop_trim and matched in text:
        text = text[:text.index(matched)]
    return text


def sglang_answer(r: Request, p: Prompt, call: GenerateCall, tokenizer, input_logprobs=None) -> dict:
    """One sample in SGLang's /generate answer shape (also a streaming chunk while r.finish is None)."""
    def token_text(t: int):
        return tokenizer.decode([t]) if call.return_text_in_logprobs and tokenizer is not None else None

    ids, logprobs = list(r.output_ids), list(r.logprobs)
    n = len(logprobs)
    ids = ids[:n]
    meta = {"id": r.rid if p.sampling.n == 1 else f"{r.rid}-{r.sample_index}",
            "finish_reason": r.finish, "prompt_tokens": len(p.ids), "completion_tokens": n,
            "cached_tokens": 0, "weight_version": r.weight_version,
            "e2e_latency": round(time.monotonic() - r.created, 6)}
    if p.return_logprob:
        meta["output_token_logprobs"] = [[lp, t, token_text(t)] for lp, t in zip(logprobs, ids)]
        if input_logprobs is not None:
            tokens, tops = input_logprobs
            meta["input_token_logprobs"] = [[lp, t, token_text(t)] for lp, t in tokens]
            if tops is not None:
                meta["input_top_logprobs"] = [None if step is None else [[lp, t, token_text(t)] for lp, t in step]
                                              for step in tops]
        if p.top_logprobs_num:
            meta["output_top_logprobs"] = [[[lp, t, token_text(t)] for lp, t in step] for step in r.top[:n]]
    return {"text": output_text(r, p.sampling, tokenizer) if r.finish else _partial_text(ids, p, tokenizer),
            "output_ids": ids, "meta_info": meta}


def _partial_text(ids: list[int], p: Prompt, tokenizer) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode(ids, skip_special_tokens=p.sampling.skip_special_tokens).rstrip("\ufffd")
