"""Rollouts -> the fixed-shape arrays of one policy update, padded or packed several to a row.

A batch is laid out [mini_batches, micro_batches, ...]: each mini-batch is one optimizer step, each
micro-batch one gradient-accumulation step, and every micro-batch has the same shapes so the update
scans over them. Two views of each micro-batch:

- the model view, [R rows, L tokens]: `tokens` and `segment_ids` (1, 2, ... for the sequences of a
  row in order, 0 for padding). Unpacked, every row holds one sequence; packed, rows are filled
  first-fit-decreasing, and the model keeps the sequences apart (models.attention) and restarts
  their RoPE positions (models.transformer.segment_positions).
- the loss view, [N sequences, Tr response tokens]: `index` (flat position r * L + t of response
  token j of sequence n in the model view), `mask`, `rollout_logp`, and per sequence `advantages`
  and `truncated`. rl.losses sees one sequence per row whatever the packing, so sequence-level
  objectives (GRPO's per-sequence mean, GSPO's sequence ratio) stay exact.

Shapes are rounded up to a few buckets per power of two (and R, N to multiples of the data-parallel
shard count), so a run compiles the update a handful of times, not once per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import numpy as np


@dataclass(frozen=True)
class Sample:
    """One rollout as the update needs it: prompt and response token ids, the rollout engine's logprob
    of every response token, the (already normalised) advantage and whether it hit the length limit."""
    prompt: Sequence[int]
    response: Sequence[int]
    logprobs: Sequence[float]
    advantage: float
    truncated: bool = False


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Batch:
    tokens: np.ndarray        # int32 [mini, micro, R, L]
    segment_ids: np.ndarray   # int32 [mini, micro, R, L], 0 = padding
    index: np.ndarray         # int32 [mini, micro, N, Tr], into the flattened [R * L] model view
    mask: np.ndarray          # bool [mini, micro, N, Tr], response tokens
    rollout_logp: np.ndarray  # float32 [mini, micro, N, Tr]
    advantages: np.ndarray    # float32 [mini, micro, N]
    truncated: np.ndarray     # bool [mini, micro, N]

    @property
    def shape(self) -> dict[str, int]:
        mini, micro, R, L = self.tokens.shape
        return dict(mini=mini, micro=micro, rows=R, row_len=L, sequences=self.index.shape[2],
                    response_len=self.index.shape[3])


def bucket(n: int, multiple: int = 1) -> int:
    """n rounded up to at most 25% more (4 sizes per power of two), then to a multiple of `multiple`."""
    n = max(int(n), 1)
    step = max(1, 2 ** (n.bit_length() - 1) // 4)
    n = -(-n // step) * step
    return -(-n // multiple) * multiple


def padding_fraction(batch: Batch) -> float:
    """Share of the model view's token slots that hold no token (compute spent on padding)."""
    return 1.0 - float(np.count_nonzero(batch.segment_ids)) / batch.segment_ids.size


def _check(samples: Sequence[Sample]) -> None:
    if not samples:
        raise ValueError("no samples to pack")
    for i, s in enumerate(samples):
        if len(s.prompt) < 1:
            raise ValueError(f"sample {i}: empty prompt (the first response token needs a context)")
        if len(s.logprobs) != len(s.response):
            raise ValueError(f"sample {i}: {len(s.logprobs)} logprobs for {len(s.response)} response tokens")
        if not np.isfinite(np.asarray(s.logprobs, np.float64)).all():
            raise ValueError(f"sample {i}: non-finite rollout logprob")
        if not np.isfinite(s.advantage):
            raise ValueError(f"sample {i}: advantage {s.advantage} is not finite")


def _balance(lengths: list[int], ids: list[int], parts: int) -> list[list[int]]:
    """Split ids into `parts` groups of near-equal total length (longest first into the lightest)."""
    groups, totals = [[] for _ in range(parts)], [0] * parts
    for i in sorted(ids, key=lambda i: -lengths[i]):
        g = totals.index(min(totals))
        groups[g].append(i)
        totals[g] += lengths[i]
    return groups


def _rows(lengths: list[int], ids: list[int], row_len: int, pack: bool) -> list[list[int]]:
    """Sequences per row: one each, or first-fit decreasing into rows of row_len tokens."""
    if not pack:
        return [[i] for i in ids]
    rows, free = [], []
    for i in sorted(ids, key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            rows.append([])
            free.append(row_len)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= lengths[i]
    return rows


def pack(samples: Sequence[Sample], *, mini_batches: int = 1, micro_batches: int = 1, pack: bool = True,
         row_len: int = 0, shards: int = 1) -> Batch:
    """Lay out samples for `rl.trainer.Trainer.update`.

    Samples are split in order into `mini_batches` (one optimizer step each; shuffle beforehand if the
    order carries meaning), each into `micro_batches` of near-equal token counts. `row_len` is the
    packed row length (0: the longest sample, bucketed); `shards` (the mesh's data x fsdp size) must
    divide the row and sequence counts, so they are rounded up to it.
    """
    _check(samples)
    if mini_batches < 1 or micro_batches < 1:
        raise ValueError(f"mini_batches={mini_batches}, micro_batches={micro_batches}: must be >= 1")
    if len(samples) < mini_batches * micro_batches:
        raise ValueError(f"{len(samples)} samples cannot fill {mini_batches} mini-batches x {micro_batches} "
                         f"micro-batches")
    lengths = [len(s.prompt) + len(s.response) for s in samples]
    longest = max(lengths)
    L = row_len or bucket(longest)
    if longest > L:
        i = lengths.index(longest)
        raise ValueError(f"sample {i} has {longest} tokens, more than row_len={L} (batch.max_tokens_per_row)")
    minis = np.array_split(np.arange(len(samples)), mini_batches)
    micros = [_balance(lengths, list(m), micro_batches) for m in minis]
    rows = [[_rows(lengths, ids, L, pack) for ids in mini] for mini in micros]
    R = bucket(max(len(r) for mini in rows for r in mini), shards)
    N = bucket(max(len(ids) for mini in micros for ids in mini), shards)
    Tr = bucket(max(max(len(s.response) for s in samples), 1))

    shape = (mini_batches, micro_batches)
    tokens, segment_ids = np.zeros(shape + (R, L), np.int32), np.zeros(shape + (R, L), np.int32)
    index, mask = np.zeros(shape + (N, Tr), np.int32), np.zeros(shape + (N, Tr), bool)
    rollout_logp = np.zeros(shape + (N, Tr), np.float32)
    advantages, truncated = np.zeros(shape + (N,), np.float32), np.zeros(shape + (N,), bool)
    for a, mini in enumerate(rows):
        for b, micro_rows in enumerate(mini):
            n = 0
            for r, row in enumerate(micro_rows):
                t = 0
                for seg, i in enumerate(row, start=1):
                    s = samples[i]
                    P, T = len(s.prompt), len(s.response)
                    tokens[a, b, r, t:t + P + T] = np.concatenate([np.asarray(s.prompt), np.asarray(s.response)])
                    segment_ids[a, b, r, t:t + P + T] = seg
                    index[a, b, n, :T] = r * L + t + P + np.arange(T)
                    mask[a, b, n, :T] = True
                    rollout_logp[a, b, n, :T] = s.logprobs
                    advantages[a, b, n], truncated[a, b, n] = s.advantage, s.truncated
                    t += P + T
                    n += 1
    return Batch(tokens, segment_ids, index, mask, rollout_logp, advantages, truncated)

