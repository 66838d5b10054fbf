"""Causal attention forward + backward, one layer's worth: blockwise_attention per tile size against
reference_attention and torch's scaled_dot_product_attention, interleaved in one process.

Shapes are one micro-batch of the ~100M benchmark model's RL update (4 rows x 512 tokens, 12 query /
4 key-value heads of 64, float32); the loss is sum(out * w), so the backward gets a dense cotangent.
Every side is timed round-robin (the order rotates each round, so load from other processes hits all
alike) and compared per round with the first blockwise tile; the gradients of all sides are checked
against each other before timing.

    python -m benchmarks.attention                     # tiles 64, 128, 256 against both references
    python -m benchmarks.attention --tiles 32 64 --seq-len 1024
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from models.attention import blockwise_attention, reference_attention
from rl.hugepages import reexec_with_huge_pages


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="rows (one micro-batch of the update benchmark)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--heads", type=int, default=12, help="query heads")
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--tiles", type=int, nargs="+", default=[64, 128, 256], help="blockwise tile sizes")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds; each runs every side once")
    return p.parse_args(argv)


def jax_sides(args, q, k, v, w):
    valid = jnp.ones(q.shape[:2], bool)

    def grad_of(attend):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * w), argnums=(0, 1, 2)))

    sides = {f"blockwise {t}": grad_of(lambda q, k, v, t=t: blockwise_attention(q, k, v, 0, valid, t))
             for t in args.tiles}
    sides["reference"] = grad_of(lambda q, k, v: reference_attention(q, k, v, 0, valid))
    return {name: (lambda f=f: jax.block_until_ready(f(q, k, v))) for name, f in sides.items()}


def torch_side(args, q, k, v, w):
    """torch SDPA in [B, N, T, H], GQA by repeating the key-value heads (what transformers does on CPU)."""
    qt, kt, vt = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    wt = torch.from_numpy(np.array(w)).transpose(1, 2).contiguous()
    groups = args.heads // args.kv_heads

    def run():
        for x in (qt, kt, vt):
            x.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(
            qt, kt.repeat_interleave(groups, 1), vt.repeat_interleave(groups, 1), is_causal=True)
        (out * wt).sum().backward()
        return [x.grad.transpose(1, 2).numpy() for x in (qt, kt, vt)]

    return run


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    B, T, N, K, H = args.batch, args.seq_len, args.heads, args.kv_heads, args.head_dim
    q, w = (jnp.asarray(rng.standard_normal((B, T, N, H), np.float32)) for _ in range(2))
    k, v = (jnp.asarray(rng.standard_normal((B, T, K, H), np.float32)) for _ in range(2))
    sides = jax_sides(args, q, k, v, w)
    sides["torch sdpa"] = torch_side(args, q, k, v, w)
    grads = {name: [np.asarray(g) for g in fn()] for name, fn in sides.items()}
    first = next(iter(grads))
    for name, g in grads.items():
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(g, grads[first]))
        if err > 1e-3:
            raise SystemExit(f"{name}: gradients differ from {first} by {err:.2e}")
    print(f"q [{B}, {T}, {N}, {H}], k/v [{B}, {T}, {K}, {H}], float32, causal; forward + backward; "
          f"gradients agree to 1e-3; jax {jax.__version__}, torch {torch.__version__}")
    names = list(sides)
    times = {name: [] for name in names}
    for i in range(args.rounds + 2):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            sides[name]()
            if i >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    base = np.array(times[first])
    print(f"{'side':<16} {'median ms':>10} {'/ ' + first + ' (per round)':>28}")
    for name in names:
        print(f"{name:<16} {np.median(times[name]) * 1e3:10.1f} {np.median(np.array(times[name]) / base):28.3f}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
