"""Greedy decode throughput: models.sampler.generate against transformers' generate, same weights.

Both run in this one process on the same CPU cores (torch gets one thread per core, and is also timed
with one thread). A decode step reads every weight once, so the time to stream the weights at this
machine's memory bandwidth is the floor for a step at small batch; the benchmark measures that
bandwidth and reports how close each implementation gets to it. It also measures the matmul peak:
at a few rows a step's arithmetic (2 FLOPs per weight per row) can take longer than its read, and
then the step is bound by the FMA rate, not by memory.

    python benchmarks/decode.py            # ~100M-parameter Qwen3, batch 8, 128 new tokens
    python benchmarks/decode.py --quick    # a smaller model and fewer tokens
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import models
from models.sampler import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import QWEN3_100M, QWEN3_QUICK, random_qwen3_checkpoint  # noqa: E402
from benchmarks.train_step import count_params, matmul_peak  # noqa: E402
from rl.hugepages import reexec_with_huge_pages  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per side, interleaved across sides; the best is reported")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (1 is timed too)")
    p.add_argument("--quick", action="store_true", help="small model, 32 new tokens")
    p.add_argument("--steps-only", action="store_true",
                   help="only time one decode step: scanned layers, the unrolled loop, and that loop over "
                        "[in, out] weights as before 2026-12-04 (no transformers)")
    return p.parse_args(argv)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> tuple[float, str]:
    """Best read bandwidth (bytes/s) over a few ways of summing a gib-sized float32 array."""
    n = int(gib * 2**30) // 4
    x_np = np.ones(n, np.float32)
    x_jax = jnp.asarray(x_np)
    x_torch = torch.from_numpy(x_np)
    jax_sum = jax.jit(jnp.sum)
    jax_sum(x_jax).block_until_ready()
    ways = {"numpy sum": lambda: x_np.sum(), "torch sum": lambda: x_torch.sum(),
            "jax sum": lambda: jax_sum(x_jax).block_until_ready()}
    rates = {name: x_np.nbytes / best_time(fn, repeats) for name, fn in ways.items()}
    name = max(rates, key=rates.get)
    detail = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items())
    return rates[name], f"{name} of {gib:g} GiB ({detail} GB/s)"


def step_flops(hf: dict, B: int, S: int) -> float:
    """FLOPs of one decode step: every matmul weight and the unembedding once per row, and attention's
    two dots over S cache slots."""
    D, V, L, NH = hf["hidden_size"], hf["vocab_size"], hf["num_hidden_layers"], hf["num_attention_heads"] * hf["head_dim"]
    return 2.0 * B * (count_params(hf)["non_embedding"] + D * V) + 4.0 * B * L * NH * S


def decode_steps(params, cfg, B: int, S: int, repeats: int) -> dict[str, float]:
    """One KV-cache decode step three ways, timed interleaved; returns the best time of each:
    scan:     `hidden_states` (lax.scan over the stacked layers, as training runs);
    unrolled: `models.decode` (layers sliced once into [out, in] weights, each the left operand of its
              dot; loop unrolled; per-layer caches, keys [B, K, H, S] and values [B, K, S, H]);
    in-out:   its reference, the unrolled loop as it was before 2026-12-04: the same, over weights in
              the training [in, out] layout (x @ W)."""
    from models.decode import decode_logits, hidden_states_unrolled, split_cache, unstack_layers
    from models.layers import dense
    from models.transformer import hidden_states, init_cache, unembedding

    tokens, valid, pos = jnp.ones((B, 1), jnp.int32), jnp.ones((B, S), jnp.int32), jnp.full((B, 1), S // 2)

    def step(forward):  # the step's whole read: every layer, then the unembedding
        def run(weights, cache):
            h_B1D, cache = forward(weights, cfg, tokens, valid, pos, cache, S // 2)
            return decode_logits(h_B1D[:, 0], unembedding(weights, cfg)), cache
        return jax.jit(run, donate_argnums=1)

    in_out = {**params, "layers": [jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(cfg.num_layers)]}
    cache = init_cache(cfg, B, S)
    sides = {"scan": [step(hidden_states), params, cache],
             "in-out": [step(functools.partial(hidden_states_unrolled, matmul=dense)), in_out, split_cache(cache)],
             "unrolled": [step(hidden_states_unrolled), jax.jit(unstack_layers)(params), split_cache(cache)]}
    times = {name: [] for name in sides}
    for i in range(repeats + 2):
        for name, side in sides.items():
            fn, weights, cache = side
            t0 = time.perf_counter()
            logits, side[2] = fn(weights, cache)
            logits.block_until_ready()
            if i >= 2:  # the first two calls compile and warm up
                times[name].append(time.perf_counter() - t0)
    best = {name: min(t) for name, t in times.items()}
    pairs = np.array(times["unrolled"]) / np.array(times["in-out"])
    print(f"one decode step, batch {B}, cache {S} (best of {repeats}, interleaved): scan {best['scan'] * 1e3:.1f} ms, "
          f"unrolled {best['unrolled'] * 1e3:.1f} ms ({best['scan'] / best['unrolled']:.2f}x faster); unrolled over "
          f"[in, out] weights {best['in-out'] * 1e3:.1f} ms: unrolled / that, per interleaved pair, "
          f"median {np.median(pairs):.3f}, lower in {np.mean(pairs < 1):.0%} of pairs")
    return best


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.new_tokens = min(args.new_tokens, 32)
    hf_kwargs = QWEN3_QUICK if args.quick else QWEN3_100M
    B, T, N = args.batch, args.prompt_len, args.new_tokens
    torch_threads = list(dict.fromkeys((1, args.threads)))

    with tempfile.TemporaryDirectory() as folder:
        hf_model = random_qwen3_checkpoint(hf_kwargs, Path(folder))
        cfg, params = models.load_hf(folder, remat="none")
    hf_model.generation_config.eos_token_id = None  # every run decodes exactly N tokens
    n_params = sum(x.size for x in jax.tree.leaves(params))
    # A decode step reads every weight except the embedding table (only B rows are gathered), unless tied.
    step_bytes = sum(x.nbytes for x in jax.tree.leaves(params)) - (0 if cfg.tie_word_embeddings else
                                                                    params["embed"].nbytes)
    print(f"config: Qwen3 {hf_kwargs} = {n_params / 1e6:.1f}M parameters, float32")
    print(f"run: batch {B}, prompt {T} tokens, {N} new tokens, greedy; {os.cpu_count()} cores, "
          f"torch threads {torch_threads}, jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")

    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
    ids = torch.from_numpy(prompts)

    def run_jax(n):
        return generate(params, cfg, prompts.tolist(), max_new_tokens=n, temperature=0.0)

    def run_torch(n, threads):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0)

    bandwidth, how = memory_bandwidth()
    limit = step_bytes / bandwidth
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s, best of {how}")
    print(f"weights streamed per decode step: {step_bytes / 1e6:.0f} MB -> {limit * 1e3:.1f} ms per step at that "
          "bandwidth (the decode limit)")
    flops, peak = step_flops(hf_kwargs, B, T + N), matmul_peak(2048, 5, args.threads)
    fastest = max(peak, key=peak.get)
    floor = flops / peak[fastest]
    print("matmul peak float32 2048^3: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak.items()) + " GFLOP/s")
    print(f"arithmetic per decode step: {flops / 1e9:.2f} GFLOP -> {floor * 1e3:.1f} ms at the {fastest} peak = "
          f"{floor / limit:.2f}x the limit ({'compute' if floor > limit else 'memory'}-bound at batch {B}); "
          f"a step within 2x the limit must run at >= {flops / (2 * limit) / peak[fastest]:.0%} of that peak")
    best = decode_steps(params, cfg, B, T + N, max(args.repeats, 30))
    print("step / limit: " + ", ".join(f"{name} {t / limit:.2f} ({flops / t / peak[fastest]:.0%} of peak)"
                                       for name, t in best.items()))
    if args.steps_only:
        return

    # On a busy machine torch's spinning thread pool can be far slower with more threads than cores
    # are free, so transformers is also timed single-threaded and the faster of the two is the baseline.
    sides = {"models.generate": run_jax}
    sides.update({f"transformers {t}t": functools.partial(run_torch, threads=t) for t in torch_threads})
    for fn in sides.values():
        fn(N), fn(1)  # warm up: compilation, allocator, thread pools
    totals, prefills = {name: [] for name in sides}, {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():  # interleaved: load from other processes hits every side alike
            totals[name].append(best_time(lambda: fn(N), 1))
            prefills[name].append(best_time(lambda: fn(1), 1))
    print(f"{'':<16} {'tokens/s':>9} {'total s':>8} {'ms/step':>8} {'step / limit':>12}  (best of {args.repeats})")
    for name in sides:
        total, step = min(totals[name]), (min(totals[name]) - min(prefills[name])) / (N - 1)
        print(f"{name:<16} {B * N / total:>9.1f} {total:>8.2f} {step * 1e3:>8.1f} {step / limit:>12.2f}")
    theirs = {name: min(totals[name]) for name in sides if name.startswith("transformers")}
    baseline = min(theirs, key=theirs.get)
    print(f"speedup models.generate / {baseline}: {theirs[baseline] / min(totals['models.generate']):.2f}x "
          "(tokens/s, prefill included)")
    agree = np.mean(np.array([c.token_ids for c in run_jax(N)]) == run_torch(N, args.threads)[:, T:].numpy())
    print(f"greedy tokens agreeing with transformers: {agree:.1%}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
