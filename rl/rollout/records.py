"""What the rollout client asks for (SampleRequest) and what it returns (Sample), and how one SGLang
/generate answer becomes a Sample."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class SampleRequest:
    """One completion to draw. (key, index) is its identity: the client returns each identity exactly
    once. `sampling` holds SGLang sampling_params (max_new_tokens, temperature, top_p, stop_token_ids, ...);
    the client adds n=1 and sampling_seed=seed."""
    key: str
    index: int
    prompt_ids: tuple[int, ...]
    sampling: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def identity(self) -> tuple[str, int]:
        return self.key, self.index

    @property
    def label(self) -> str:
        return f"sample {self.key!r}#{self.index}"


@dataclass
class Sample:
    """One completion as the server produced it. output_ids and logprobs come from
    meta_info.output_token_logprobs, so the matched stop token is included (as SGLang and Atropos read them).
    logprobs are SGLang's: log_softmax(logits / temperature) before top-k / top-p."""
    key: str
    index: int
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" or "length" ("length" is what overlong filtering keys on)
    weight_version: str
    server: str  # the URL that answered
    latency: float  # seconds of the request that answered (retries not included)
    attempts: int  # requests sent for this sample: 1 unless retried or resubmitted after an abort
    seed: int | None
    text: str = ""

    @property
    def identity(self) -> tuple[str, int]:
        return self.key, self.index


class BadAnswer(ValueError):
    """A /generate answer that does not have SGLang's shape."""


def sample_seed(seed: int, index: int) -> int:
    """The sampling_seed of sample `index` in a group seeded `seed`: mixed, so that groups seeded s and s+1
    never share a sample's seed (seed + index would)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0]) & 0x7FFFFFFF


def group_requests(key: str, prompt_ids: Sequence[int], n: int, sampling: Mapping[str, Any], seed: int
                   ) -> list[SampleRequest]:
    """The n requests of one group: same prompt, indices 0..n-1, each with its own seed."""
    if n < 1:
        raise ValueError(f"group {key!r}: n must be >= 1, got {n}")
    return [SampleRequest(key, i, tuple(prompt_ids), dict(sampling), sample_seed(seed, i)) for i in range(n)]


def finish_type(answer: Mapping[str, Any]) -> str:
    """SGLang's finish_reason.type ("stop", "length" or "abort")."""
    meta = answer.get("meta_info")
    reason = meta.get("finish_reason") if isinstance(meta, Mapping) else None
    if not isinstance(reason, Mapping) or reason.get("type") not in ("stop", "length", "abort"):
        raise BadAnswer(f"meta_info.finish_reason must be an object with a 'type' of stop, length or abort, "
                        f"got {reason!r}")
    return reason["type"]


def abort_message(answer: Mapping[str, Any]) -> str:
    reason = answer["meta_info"]["finish_reason"]
    return str(reason.get("message") or reason)


def abort_status(answer: Mapping[str, Any]) -> int | None:
    """SGLang tags aborts caused by the request itself (too long, bad parameters) with a 4xx status_code."""
    code = answer["meta_info"]["finish_reason"].get("status_code")
    return code if isinstance(code, int) else None


def output_tokens(answer: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """(token ids, finite logprobs) of meta_info.output_token_logprobs; BadAnswer names the entry at fault."""
    triples = answer["meta_info"].get("output_token_logprobs")
    if not isinstance(triples, list):
        raise BadAnswer(f"meta_info.output_token_logprobs must be a list (was return_logprob sent?), got "
                        f"{type(triples).__name__}")
    output_ids, logprobs = [], []
    for i, t in enumerate(triples):
        # A logprob is finite and <= 0 (a little above 0 is float rounding of a near-certain token).
        if not (isinstance(t, (list, tuple)) and len(t) >= 2 and isinstance(t[0], (int, float))
                and not isinstance(t[0], bool) and isinstance(t[1], int) and not isinstance(t[1], bool)
                and math.isfinite(t[0]) and t[0] <= 1e-3):
            raise BadAnswer(f"meta_info.output_token_logprobs[{i}] must be [logprob <= 0, token_id, text], got {t!r}")
        logprobs.append(float(t[0]))
        output_ids.append(t[1])
    return output_ids, logprobs


def to_sample(answer: Mapping[str, Any], request: SampleRequest, *, server: str, latency: float,
              attempts: int) -> Sample:
    """Read one finished (not aborted) /generate answer; BadAnswer names the field that is wrong."""
    kind = finish_type(answer)
    meta = answer["meta_info"]
    output_ids, logprobs = output_tokens(answer)
    version = meta.get("weight_version")
    return Sample(key=request.key, index=request.index, prompt_ids=list(request.prompt_ids), output_ids=output_ids,
                  logprobs=logprobs, finish_reason=kind, weight_version="" if version is None else str(version),
                  server=server, latency=latency, attempts=attempts, seed=request.seed,
                  text=answer.get("text") if isinstance(answer.get("text"), str) else "")
