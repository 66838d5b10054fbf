"""Compiled temporary memory of chunked token logprobs against full [N, V] logits.

Only lowers and compiles, with jax.ShapeDtypeStruct inputs: nothing is allocated, so the default
Qwen3-14B case (one 32,768-token sequence, V = 151,936, hidden 5120, bf16 hidden and unembedding) runs
on a laptop CPU. The figure is XLA's temp_size_in_bytes for this backend: buffers the program needs
beyond its inputs and outputs.

    python -m benchmarks.logprob_memory                  # forward and value_and_grad, default chunk
    python -m benchmarks.logprob_memory --chunk 1024 --entropy
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from models.logprobs import DEFAULT_CHUNK, chunked_logprobs
from rl.hugepages import reexec_with_huge_pages

GIB = 2**30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768, help="rows N (one sequence's predicted tokens)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=5120)
    p.add_argument("--dtype", default="bfloat16", help="dtype of hidden states and unembedding")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per chunk")
    p.add_argument("--entropy", action="store_true", help="also compute (and differentiate) entropies")
    return p.parse_args(argv)


def full_logprobs(hidden_ND, unembed_VD, targets_N, entropy: bool):
    """The definition, with the [N, V] float32 logits in memory."""
    logp_NV = jax.nn.log_softmax(
        jnp.einsum("ND,VD->NV", hidden_ND, unembed_VD, preferred_element_type=jnp.float32), axis=-1)
    logp_N = jnp.take_along_axis(logp_NV, targets_N[:, None], axis=-1)[:, 0]
    return (logp_N, -jnp.sum(jnp.exp(logp_NV) * logp_NV, axis=-1)) if entropy else logp_N


def temp_bytes(fn, args, grad: bool) -> int:
    def loss(h, w, t):  # every output counts, so none is dead code
        return sum(jnp.sum(x) for x in jax.tree.leaves(fn(h, w, t)))

    program = jax.value_and_grad(loss, argnums=(0, 1)) if grad else fn
    return jax.jit(program).lower(*args).compile().memory_analysis().temp_size_in_bytes


def main(argv=None):
    a = parse_args(argv)
    dtype = jnp.dtype(a.dtype)
    args = (jax.ShapeDtypeStruct((a.tokens, a.hidden), dtype), jax.ShapeDtypeStruct((a.vocab, a.hidden), dtype),
            jax.ShapeDtypeStruct((a.tokens,), jnp.int32))
    impls = {"full": lambda h, w, t: full_logprobs(h, w, t, a.entropy),
             f"chunked({a.chunk})": lambda h, w, t: chunked_logprobs(h, w, t, a.chunk, a.entropy)}
    print(f"N={a.tokens} V={a.vocab} D={a.hidden} {dtype.name} entropy={a.entropy} backend={jax.default_backend()}; "
          f"one float32 logits chunk = {a.chunk * a.vocab * 4 / GIB:.3f} GiB, all logits = "
          f"{a.tokens * a.vocab * 4 / GIB:.2f} GiB")
    for grad in (False, True):
        sizes = {name: temp_bytes(fn, args, grad) for name, fn in impls.items()}
        (full_name, full), (name, ours) = sizes.items()
        print(f"{'value_and_grad' if grad else 'forward':>14}: {full_name} {full / GIB:8.3f} GiB   "
              f"{name} {ours / GIB:8.3f} GiB   ratio {full / ours:6.1f}x")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
