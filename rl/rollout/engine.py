"""Continuous batching on the JAX sampler: a fixed number of decode slots, each with its own KV-cache rows.

One background thread runs the loop. At every step boundary it admits waiting requests into free slots
(prefilling them together), runs one decode step for all slots, hands each new token to its request,
and frees the slot of every finished request at once, so a group whose completions end at very
different lengths keeps the batch full. Sampling parameters and seeds stay per request.

Cache layout: per layer, [slots, kv_heads, S, head_dim] (models.decode). A row's token at sequence
index t sits at slot t, so RoPE positions equal slots and rows advance independently: each step
writes every row's new key/value at its own slot (a scatter, in place, before attention reads the
cache). S grows and shrinks in powers of two with the longest running row, so attention reads only
what the rows hold.

Semantics are the sampler's (`models.sampler`): logprobs are log_softmax(logits / temperature) before
filtering, the matched stop token is part of the output, temperature < 1e-6 is greedy. A sample's
randomness depends on (seed, sample index, step) only, not on its slot or its neighbours.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.decode import SLOT_AXIS, decode_logits, hidden_states_unrolled, init_layer_caches, unstack_layers
from models.sampler import GREEDY_BELOW, SamplingParams, bucket, needs_filtering, sample_tokens
from models.logprobs import chunked_logprobs
from models.transformer import unembedding

log = logging.getLogger(__name__)
TOP_LOGPROBS_MAX = 20  # top_logprobs_num above this is refused (OpenAI's own cap)
TOP_CHUNK = 256  # prompt positions whose logits a top_logprobs_num request holds at once
PREFILL_ROWS = 8  # requests prefilled by one call
MIN_CACHE = 64  # slots per row
MIN_WIDTH = 4  # rows of the smallest compiled step


def abort_reason(message: str) -> dict:
    """SGLang's FINISH_ABORT.to_json."""
    return {"type": "abort", "message": message, "status_code": None, "err_type": None}


@dataclasses.dataclass(eq=False)
class Request:
    """One sample to generate. The engine thread fills the outputs and calls `on_update` (from its own
    thread) after each new token when `stream` is set, and always once when the request finishes."""
    prompt: list[int]
    params: SamplingParams  # stop_token_ids holds every stop id (EOS included unless ignored)
    rid: str = ""
    sample_index: int = 0  # folded into the seed, so the n samples of one request differ
    stop_strings: tuple[str, ...] = ()
    text_of: Callable[[list[int]], str] | None = None  # detokenizer, needed for stop strings
    top_logprobs: int = 0
    stream: bool = False
    on_update: Callable[["Request"], None] | None = None
    # outputs
    output_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top: list[list[tuple[float, int]]] = dataclasses.field(default_factory=list)
    finish: dict | None = None  # SGLang's finish_reason: {"type": "stop"|"length"|"abort", ...}
    weight_version: str = ""
    created: float = dataclasses.field(default_factory=time.monotonic)
    aborted: str | None = None  # set by abort(): the message the request finishes with
    admitted: bool = False  # has been in a decode slot (a retracted request waits again, admitted)

    @functools.cached_property
    def stop_tail(self) -> int:
        """Output tokens decoded to look for a stop string: a string of n UTF-8 bytes spans at most n
        tokens, and it can only end in the newest one."""
        return max(_STOP_TAIL, 1 + max((len(s.encode()) for s in self.stop_strings), default=0))


class Engine:
    """Continuous batching over `slots` decode rows. Thread-safe: `submit`, `abort`, `pause`, `resume`,
    `set_weights` and `flush` may be called from any thread."""

    def __init__(self, params, config: ModelConfig, *, slots: int = 32, context_length: int | None = None,
                 weight_version: str = "default"):
        self.cfg = config
        self.slots = slots
        self.context_length = context_length or config.max_position_embeddings
        self.weight_version = weight_version
        self._weights = _unstack(params)
        self._caches: list[dict] | None = None
        self._rows: list[Request | None] = [None] * slots
        self._waiting: collections.deque[Request] = collections.deque()
        self._paused = False
        self._new_weights = None
        self._retract = False
        self._closed = False
        self._cond = threading.Condition()
        self._arrays = {name: np.zeros(slots, dtype) for name, dtype in _ROW_ARRAYS.items()}
        self.steps = 0  # decode steps run, for the benchmark and tests
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # ---- control, from any thread ---------------------------------------------------------------------
    def submit(self, requests: list[Request]) -> None:
        done = []
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            for r in requests:
                r.weight_version = self.weight_version  # and again when admitted (_admit)
                if r.params.max_new_tokens <= 0:
                    r.finish = {"type": "length", "length": 0}
                    done.append(r)
                else:
                    self._waiting.append(r)
            self._cond.notify_all()
        for r in done:
            _notify(r)

    def abort(self, rid: str | None = None, *, abort_all: bool = False, prefix: bool = False,
              message: str = "Abort requested") -> int:
        """Abort waiting and running requests with this rid (with prefix: every rid starting with it, as
        SGLang's /abort_request matches, so "r" also ends a batch's "r_0", "r_1"), or all: each
        finishes with type "abort" at the next step boundary. Returns how many were found."""
        with self._cond:
            found = [r for r in list(self._waiting) + [r for r in self._rows if r is not None]
                     if abort_all or r.rid == rid or (prefix and rid and r.rid.startswith(rid))]
            for r in found:
                r.aborted = message
            self._cond.notify_all()
        return len(found)

    def pause(self, mode: str = "abort") -> None:
        """SGLang's pause modes: "abort" aborts everything in flight, "retract" moves running requests
        back to the queue (they resume from their tokens so far, re-prefilled), "in_place" keeps them in
        their slots with their caches. New requests queue until `resume`."""
        with self._cond:
            self._paused = True
            if mode == "abort":
                for r in list(self._waiting) + [r for r in self._rows if r is not None]:
                    r.aborted = "Aborted by pause_generation"
            elif mode == "retract":
                self._retract = True  # applied by the engine thread at the step boundary
            elif mode != "in_place":
                raise ValueError(f"mode={mode!r}: expected 'abort', 'retract' or 'in_place'")
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def pending(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._waiting) + sum(r is not None for r in self._rows)

    def set_weights(self, params, config: ModelConfig, version: str) -> None:
        """Serve new weights (same architecture) from the next step boundary on; the tokens already in
        the caches stay (as SGLang's in-place weight update)."""
        if (config.replace(hf_extra=()) != self.cfg.replace(hf_extra=())):
            raise ValueError("the new checkpoint's config differs from the served model's")
        weights = _unstack(params)
        with self._cond:
            self._new_weights = (weights, version)
            self._cond.notify_all()
            while self._new_weights is not None and self._thread.is_alive():
                self._cond.wait(0.1)

    def flush(self) -> bool:
        """Drop the KV caches; refused (False) while requests are pending, as SGLang's flush_cache. While
        paused, requests that arrived since do not count: SGLang holds them before its scheduler, so a
        weight sync's flush is not blocked by another client's request."""
        with self._cond:
            if any(r.admitted or not self._paused for r in self._waiting) or any(r is not None for r in self._rows):
                return False
            self._caches = None
            return True

    def prompt_logprobs(self, ids: list[int], temperature: float, top_n: int = 0) -> tuple[list[float], list | None]:
        """log p(ids[t] | ids[:t]) for t >= 1 under the served weights, at the sampler's temperature; with
        top_n, also the top_n (logprob, id) pairs of each of those positions, best first."""
        tokens = np.zeros((1, bucket(len(ids))), np.int32)
        tokens[0, :len(ids)] = ids
        scale = 1.0 if temperature < GREEDY_BELOW else temperature
        out = jax.device_get(_prompt_logprobs(self._weights, tokens, np.float32(scale), cfg=self.cfg, top_n=top_n))
        n = len(ids) - 1
        top = [list(zip(v.tolist(), i.tolist())) for v, i in zip(out[1][:n], out[2][:n])] if top_n else None
        return out[0][:n].tolist(), top

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        for r in list(self._waiting) + [r for r in self._rows if r is not None]:
            self._finish(r, abort_reason("server shutting down"))

    # ---- the loop, on the engine thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._has_work():
                    self._cond.wait()
                if self._closed:
                    return
                if self._new_weights is not None:
                    (self._weights, self.weight_version), self._new_weights = self._new_weights, None
                    self._cond.notify_all()
                if self._retract:
                    self._waiting.extendleft(r for r in reversed(self._rows) if r is not None)
                    self._rows, self._retract = [None] * self.slots, False
                finished = self._take_aborted()
                admitted = [] if self._paused else self._admit()
                run = not self._paused and any(r is not None for r in self._rows)
            for r in finished:
                _notify(r)
            try:
                if admitted:
                    self._prefill(admitted)
                if run:
                    self._step()
            except Exception as e:  # keep serving: fail the requests in flight, not the server
                log.exception("engine step failed")
                with self._cond:
                    failed = [r for r in self._rows if r is not None]
                    failed += [r for _, r in admitted if r.finish is None and r not in failed]
                    self._rows = [None] * self.slots
                    self._caches = None
                for r in failed:
                    self._finish(r, abort_reason(f"engine error: {type(e).__name__}: {e}"))

    def _has_work(self) -> bool:
        running = any(r is not None for r in self._rows)
        aborted = any(r.aborted for r in list(self._waiting) + [r for r in self._rows if r is not None])
        admissible = self._waiting and None in self._rows
        return (self._new_weights is not None or self._retract or aborted
                or (not self._paused and (running or admissible)))

    def _take_aborted(self) -> list[Request]:
        out = [r for r in self._waiting if r.aborted]
        self._waiting = collections.deque(r for r in self._waiting if not r.aborted)
        for b, r in enumerate(self._rows):
            if r is not None and r.aborted:
                self._rows[b] = None
                out.append(r)
        for r in out:
            r.finish = abort_reason(r.aborted)
        if not any(r is not None for r in self._rows):
            self._caches = None  # nothing running: give the memory back
        return out

    def _admit(self) -> list[tuple[int | None, Request]]:
        """Waiting requests into free slots, in order. One-token requests (health probes) need no slot:
        their token comes from the prefill, so they pass even when every slot is busy."""
        admitted, left = [], collections.deque()
        free = [b for b in range(self.slots) if self._rows[b] is None]
        while self._waiting:
            r = self._waiting.popleft()
            r.weight_version = self.weight_version  # the weights that generate it (arrived while paused: newer)
            r.admitted = True
            if r.params.max_new_tokens - len(r.output_ids) <= 1:
                admitted.append((None, r))
            elif free:
                b = free.pop(0)
                self._rows[b] = r
                admitted.append((b, r))
            else:
                left.append(r)
        self._waiting = left
        return admitted

    def _fit(self, longest: int) -> int:
        """Size the caches to the running rows before a prefill or step, and return the batch width W.

        W is the smallest `width_rung` covering the running rows (at most `slots`), so a step costs what
        the rows running now need, not what the busiest moment needed. When the rows fit a smaller rung
        (or a new row lies beyond the width) they are moved to slots 0..n-1 and the caches are rebuilt
        at the new width; S, the slots per row, follows the longest row in powers of two.
        """
        active = [b for b in range(self.slots) if self._rows[b] is not None]
        W_have, _, S_have, _ = self._caches[0]["v"].shape if self._caches else (0, 0, 0, 0)
        S = max(MIN_CACHE, bucket(longest + 1, MIN_CACHE))
        if S_have and S <= S_have < 4 * S:
            S = S_have  # hysteresis: shrink only when rows got 4x shorter
        W = min(self.slots, width_rung(len(active)))
        if self._caches is not None and max(active, default=0) < W_have and W >= W_have:
            W = W_have
        if (W, S) == (W_have, S_have):
            return W
        if self._caches is None:
            self._caches = init_layer_caches(self.cfg, W, S)
        index = np.full(W, W_have, np.int32)  # out of range: a zero row
        index[:len(active)] = active
        self._caches = _relayout(self._caches, index, S)
        self._rows = [self._rows[b] for b in active] + [None] * (self.slots - len(active))
        for name, x in self._arrays.items():
            moved = x[active]
            x[:] = 0
            x[:len(active)] = moved
        return W

    def _prefill(self, admitted: list[tuple[int | None, Request]]) -> None:
        if any(b is not None for b, _ in admitted):
            lengths = [len(r.prompt) + len(r.output_ids) for r in self._rows if r is not None]
            W = self._fit(max(lengths + [len(r.prompt) + len(r.output_ids) for _, r in admitted]))
        else:  # only probes: the caches are not touched
            W = self.slots
        slot_of = {id(r): b for b, r in enumerate(self._rows) if r is not None}  # _fit may have moved rows
        for start in range(0, len(admitted), PREFILL_ROWS):
            chunk = [(slot_of.get(id(r)), r) for _, r in admitted[start:start + PREFILL_ROWS]]
            seqs = [r.prompt + r.output_ids for _, r in chunk]  # retracted requests resume from their tokens
            k, P = bucket(len(chunk), 1), bucket(max(map(len, seqs)))
            tokens = np.zeros((k, P), np.int32)
            length = np.ones(k, np.int32)
            slot = np.full(k, W, np.int32)  # rows without a slot write out of range: dropped
            for i, ((b, r), seq) in enumerate(zip(chunk, seqs)):
                tokens[i, :len(seq)], length[i] = seq, len(seq)
                slot[i] = W if b is None else b
            a = _row_arrays([r for _, r in chunk], k)
            sample, filtering, top_n = self._modes(a, [r for _, r in chunk])
            fresh, *out = _prefill(self._weights, tokens, length, a["seed"], a["index"], a["step"], a["temperature"],
                                   a["top_p"], a["top_k"], a["min_p"], cfg=self.cfg, sample=sample,
                                   filtering=filtering, top_n=top_n)
            if any(b is not None for b, _ in chunk):  # probes (one token) keep nothing
                self._caches = _store(self._caches, fresh, slot)
            for i, (b, _) in enumerate(chunk):
                if b is not None:
                    for name, x in a.items():
                        self._arrays[name][b] = x[i]
            self._record(chunk, *jax.device_get(out))

    def _step(self) -> None:
        if not any(r is not None for r in self._rows):  # every admitted request finished at its prefill
            return
        W = self._fit(int(max(self._arrays["pos"][b] for b, r in enumerate(self._rows) if r is not None)) + 1)
        rows = [(b, r) for b, r in enumerate(self._rows) if r is not None]
        ids = [b for b, _ in rows]
        a = {name: x[:W] for name, x in self._arrays.items()}
        sample, filtering, top_n = self._modes({name: x[ids] for name, x in a.items()}, [r for _, r in rows])
        self._caches, *out = _step(self._weights, self._caches, a["token"], a["pos"], a["seed"], a["index"], a["step"],
                                   a["temperature"], a["top_p"], a["top_k"], a["min_p"], cfg=self.cfg, sample=sample,
                                   filtering=filtering, top_n=top_n)
        self.steps += 1
        self._record(rows, *(x[ids] for x in jax.device_get(out)))

    @staticmethod
    def _modes(a: dict, requests: list[Request]) -> tuple[bool, bool, int]:
        """Static switches of the compiled programs: any sampled row, any filtering row, top logprobs."""
        top_n = TOP_LOGPROBS_MAX if any(r.top_logprobs for r in requests) else 0
        return (bool((a["temperature"] >= GREEDY_BELOW).any()),
                needs_filtering(a["temperature"], a["top_p"], a["top_k"], a["min_p"]), top_n)

    def _record(self, rows: list[tuple[int | None, Request]], token_R, logprob_R, top_val_RN=None,
                top_id_RN=None) -> None:
        """Append each row's new token; finish and free the rows that stopped."""
        a = self._arrays
        updates, finished = [], []
        for i, (b, r) in enumerate(rows):
            t = int(token_R[i])
            r.output_ids.append(t)
            r.logprobs.append(float(logprob_R[i]))
            if top_val_RN is not None and r.top_logprobs:
                r.top.append(list(zip(top_val_RN[i, :r.top_logprobs].tolist(), top_id_RN[i, :r.top_logprobs].tolist())))
            finish = self._finish_reason(r, t)
            if finish is None and b is not None:
                a["token"][b], a["pos"][b], a["step"][b] = t, len(r.prompt) + len(r.output_ids) - 1, len(r.output_ids)
                if r.stream:
                    updates.append(r)
            else:
                r.finish = finish or {"type": "length", "length": len(r.output_ids)}
                finished.append(r)
                if b is not None:
                    with self._cond:
                        self._rows[b] = None
                    a["temperature"][b], a["pos"][b] = 0.0, 0  # a free row decodes greedily, its output unused
        for r in updates + finished:
            _notify(r)


    def _finish_reason(self, r: Request, token: int) -> dict | None:
        p = r.params
        if token in p.stop_token_ids:
            return {"type": "stop", "matched": token}
        if r.stop_strings:
            text = r.text_of(r.output_ids[-r.stop_tail:])
            hit = next((s for s in r.stop_strings if s in text), None)
            if hit is not None:
                return {"type": "stop", "matched": hit}
        if len(r.output_ids) >= p.max_new_tokens or len(r.prompt) + len(r.output_ids) >= self.context_length:
            return {"type": "length", "length": len(r.output_ids)}
        return None

    def _finish(self, r: Request, finish: dict) -> None:
        r.finish = finish
        _notify(r)


_STOP_TAIL = 64  # fewest output tokens decoded to look for a stop string
_ROW_ARRAYS = dict(token=np.int32, pos=np.int32, seed=np.uint32, index=np.int32, step=np.int32,
                   temperature=np.float32, top_p=np.float32, top_k=np.int32, min_p=np.float32)


def width_rung(rows: int) -> int:
    """The compiled batch width for `rows` running rows: four rungs per power of two (4, 8, 12, 16, 20,
    24, 28, 32, 40, 48, 56, 64, 80, ...), never under MIN_WIDTH. Halving rungs left up to half the rows
    idle as a group's completions ended; quarter rungs leave at most a fifth above 16 rows, for 4 programs
    per doubling."""
    top = bucket(rows, MIN_WIDTH)
    step = max(MIN_WIDTH, top // 8)
    return -(-max(rows, 1) // step) * step


def _row_arrays(requests: list[Request], rows: int) -> dict[str, np.ndarray]:
    """Per-row sampling arrays for these requests, padded to `rows` with greedy rows."""
    a = {name: np.zeros(rows, dtype) for name, dtype in _ROW_ARRAYS.items()}
    a["top_p"][:], a["top_k"][:] = 1.0, -1
    for i, r in enumerate(requests):
        p = r.params
        a["seed"][i], a["index"][i], a["step"][i] = p.seed % 2**32, r.sample_index, len(r.output_ids)
        a["temperature"][i], a["top_p"][i], a["top_k"][i], a["min_p"][i] = p.temperature, p.top_p, p.top_k, p.min_p
    return a


def _notify(r: Request) -> None:
    if r.on_update is not None:
        try:
            r.on_update(r)
        except Exception:  # a client that went away must not stop the engine
            log.exception("request %s: on_update failed", r.rid)


_unstack = jax.jit(unstack_layers)


@functools.partial(jax.jit, static_argnums=2)  # the shape changes: nothing to donate into
def _relayout(caches, index_W, length: int):
    """Caches with row i taken from old row index_W[i] (zeros where out of range), `length` slots long."""
    def one(name, c):
        c, axis = jnp.take(c, index_W, axis=0, mode="fill", fill_value=0), SLOT_AXIS[name]
        S = c.shape[axis]
        return (jnp.pad(c, [(0, length - S) if a == axis else (0, 0) for a in range(c.ndim)]) if length >= S
                else jax.lax.slice_in_dim(c, 0, length, axis=axis))
    return [{name: one(name, c) for name, c in layer.items()} for layer in caches]


def _keys(seed_B, index_B, step_B):
    return jax.vmap(lambda s, i, t: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), i), t))(
        seed_B, index_B, step_B)


def _sample(weights, cfg, h_BD, keys_B, temperature_B, top_p_B, top_k_B, min_p_B, sample, filtering, top_n):
    logits_BV = decode_logits(h_BD, unembedding(weights, cfg))
    token_B, logp_BV = sample_tokens(logits_BV, keys_B, temperature_B, top_p_B, top_k_B, min_p_B,
                                     sample=sample, filtering=filtering)
    out = (token_B, jnp.take_along_axis(logp_BV, token_B[:, None], axis=1)[:, 0])
    return out + tuple(jax.lax.top_k(logp_BV, top_n)) if top_n else out


@functools.partial(jax.jit, static_argnames=("cfg", "sample", "filtering", "top_n"))
def _prefill(weights, tokens_kP, length_k, seed_k, index_k, step_k, temperature_k, top_p_k, top_k_k, min_p_k, *, cfg,
             sample, filtering, top_n):
    """Run right-padded prompts [k, P]: their keys/values (per layer, in the decode layout) and each prompt's
    next token (with its logprob, and top logprobs if top_n). Independent of the caches' shape, so a
    one-token probe compiles nothing new however the running rows grew."""
    k, P = tokens_kP.shape
    positions_kP = jnp.broadcast_to(jnp.arange(P), (k, P))
    mask_kP = positions_kP < length_k[:, None]
    h_kPD, fresh = hidden_states_unrolled(weights, cfg, tokens_kP, mask_kP, positions_kP,
                                          init_layer_caches(cfg, k, P), 0)
    h_kD = h_kPD[jnp.arange(k), length_k - 1]
    return (fresh,) + _sample(weights, cfg, h_kD, _keys(seed_k, index_k, step_k), temperature_k, top_p_k, top_k_k,
                              min_p_k, sample, filtering, top_n)


@functools.partial(jax.jit, donate_argnums=0)
def _store(caches, fresh, slot_k):
    """Copy prefilled keys/values (P slots) into rows slot_k, slots 0..P-1 (out-of-range rows dropped)."""
    P = fresh[0]["v"].shape[SLOT_AXIS["v"]]

    def at(n):  # rows slot_k, slots :P, whichever axis holds the slots
        return (slot_k,) + (slice(None),) * (SLOT_AXIS[n] - 1) + (slice(0, P),)
    return [{n: c[n].at[at(n)].set(f[n], mode="drop") for n in c} for c, f in zip(caches, fresh)]


@functools.partial(jax.jit, static_argnames=("cfg", "top_n"))
def _prompt_logprobs(weights, tokens_1P, temperature, *, cfg, top_n):
    P = tokens_1P.shape[1]
    h_1PD, _ = hidden_states_unrolled(weights, cfg, tokens_1P, jnp.ones_like(tokens_1P), jnp.arange(P)[None],
                                      init_layer_caches(cfg, 1, P), 0)
    # log_softmax(h W^T / t) = log_softmax((h / t) W^T): one compiled program for every temperature.
    h_ND = h_1PD[0, :-1] / temperature.astype(h_1PD.dtype)
    if not top_n:
        return (chunked_logprobs(h_ND, unembedding(weights, cfg), tokens_1P[0, 1:]),)

    def chunk_logprobs(args):  # a chunk of positions at a time, never the [P, V] logits at once
        h_cD, next_c = args
        logp_cV = jax.nn.log_softmax(decode_logits(h_cD, unembedding(weights, cfg)), axis=-1)
        return (jnp.take_along_axis(logp_cV, next_c[:, None], axis=-1)[:, 0], *jax.lax.top_k(logp_cV, top_n))
    chunk = min(P - 1, TOP_CHUNK)
    pad = -(P - 1) % chunk
    h_CcD = jnp.pad(h_ND, ((0, pad), (0, 0))).reshape(-1, chunk, h_ND.shape[1])
    next_Cc = jnp.pad(tokens_1P[0, 1:], (0, pad)).reshape(-1, chunk)
    logp_Cc, top_val_CcN, top_id_CcN = jax.lax.map(chunk_logprobs, (h_CcD, next_Cc))
    return (logp_Cc.reshape(-1)[:P - 1], top_val_CcN.reshape(-1, top_n)[:P - 1],
            top_id_CcN.reshape(-1, top_n)[:P - 1])


@functools.partial(jax.jit, static_argnames=("cfg", "sample", "filtering", "top_n"), donate_argnums=1)
def _step(weights, caches, token_B, pos_B, seed_B, index_B, step_B, temperature_B, top_p_B, top_k_B, min_p_B, *,
          cfg, sample, filtering, top_n):
    """Feed each row's last token (sequence index pos_B) and draw the next one."""
    S = caches[0]["v"].shape[SLOT_AXIS["v"]]
    kv_valid_BS = jnp.arange(S)[None, :] <= pos_B[:, None]
    h_B1D, caches = hidden_states_unrolled(weights, cfg, token_B[:, None], kv_valid_BS, pos_B[:, None], caches,
                                           slots_B=pos_B)
    return (caches,) + _sample(weights, cfg, h_B1D[:, 0], _keys(seed_B, index_B, step_B), temperature_B, top_p_B,
                               top_k_B, min_p_B, sample, filtering, top_n)
