"""Serving throughput on a mixed-length RL load: the embedded server's continuous batching against the
same requests run one at a time, one static batch, and transformers' generate, on the same weights.

The load: 8 prompts x 8 samples = 64 requests, each with its own max_new_tokens spread evenly over
16..256, sampled at temperature 1.0 with ignore_eos (so every request runs to its own length), all
sent at once. Tokens/s counts the tokens the requests asked for; a static batch and transformers run
every row to the longest request, which is the waste continuous batching removes.

    python -m benchmarks.serve_throughput            # ~100M-parameter Qwen3
    python -m benchmarks.serve_throughput --quick    # a small model, 16 requests
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jax
import numpy as np
import torch
from tqdm import tqdm

import models
from models.sampler import SamplingParams, generate_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import QWEN3_100M, QWEN3_QUICK, random_qwen3_checkpoint  # noqa: E402
from rl.rollout.embedded import EmbeddedServer  # noqa: E402
from rl.hugepages import reexec_with_huge_pages  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--min-new", type=int, default=16)
    p.add_argument("--max-new", type=int, default=256)
    p.add_argument("--slots", type=int, default=64, help="the server's --max-running-requests")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed runs of the server and static sides after a warm-up; the best is reported (a "
                        "run can meet batch shapes the warm-up did not, and compile them)")
    p.add_argument("--quick", action="store_true", help="small model, 4 prompts x 4 samples, up to 64 tokens")
    return p.parse_args(argv)


def workload(args, vocab: int):
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, vocab, (args.prompts, args.prompt_len)).tolist()
    count = args.prompts * args.n
    lengths = np.linspace(args.min_new, args.max_new, count).round().astype(int)
    rng.shuffle(lengths)  # long and short requests interleaved, as a group's completions are
    return [(prompts[i // args.n], int(m), i) for i, m in enumerate(lengths)]


async def continuous(url: str, requests) -> tuple[float, int]:
    """All requests at once over HTTP; seconds to the last completion and tokens generated."""
    async with httpx.AsyncClient(base_url=url, timeout=3600) as http:
        async def one(prompt, max_new, seed):
            r = await http.post("/generate", json={"input_ids": prompt, "sampling_params": {
                "max_new_tokens": max_new, "temperature": 1.0, "ignore_eos": True, "sampling_seed": seed}})
            r.raise_for_status()
            meta = r.json()["meta_info"]
            assert meta["completion_tokens"] == max_new, meta
            return meta["completion_tokens"]

        start = time.perf_counter()
        tokens = await asyncio.gather(*(one(*r) for r in requests))
        return time.perf_counter() - start, sum(tokens)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.prompts, args.n, args.max_new, args.slots = 4, 4, 64, 16
    hf_kwargs = QWEN3_QUICK if args.quick else QWEN3_100M
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        hf_model = random_qwen3_checkpoint(hf_kwargs, Path(folder))
        hf_model.generation_config.eos_token_id = None
        cfg, params = models.load_hf(folder, remat="none")
        requests = workload(args, cfg.vocab_size)
        wanted = sum(m for _, m, _ in requests)
        print(f"model: Qwen3, {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M parameters, float32; "
              f"{len(requests)} requests ({args.prompts} prompts x {args.n}), prompt {args.prompt_len} tokens, "
              f"max_new_tokens {args.min_new}..{args.max_new} ({wanted} tokens in all), temperature 1.0; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        results = {}

        with EmbeddedServer(folder, extra_args=["--max-running-requests", str(args.slots)]) as server:
            asyncio.run(continuous(server.url, requests))  # warm-up: compiles the batch widths and lengths met
            runs = []
            for _ in range(args.repeats):
                steps = httpx.get(f"{server.url}/get_server_info").json()["internal_states"][0]["decode_steps"]
                seconds, _ = asyncio.run(continuous(server.url, requests))
                info = httpx.get(f"{server.url}/get_server_info").json()
                runs.append((seconds, info["internal_states"][0]["decode_steps"] - steps))
            seconds, steps = min(runs)
            results["continuous batching (server)"] = seconds
            print(f"continuous batching: runs {[round(s, 2) for s, _ in runs]} s; best: {steps} decode steps, "
                  f"{seconds / steps * 1e3:.1f} ms per step on average")

        prompts = [p for p, _, _ in requests]
        sampling = [SamplingParams(max_new_tokens=m, temperature=1.0, seed=s) for _, m, s in requests]
        generate_batch(params, cfg, prompts, sampling)  # warm-up
        results["one static batch"] = min(timed(lambda: generate_batch(params, cfg, prompts, sampling))
                                           for _ in range(args.repeats))

        for p, s in zip(prompts, sampling):  # warm-up: one compilation per new-token bucket
            generate_batch(params, cfg, [p], [s])
        results["one at a time"] = timed(lambda: [generate_batch(params, cfg, [p], [s]) for p, s in
                                                  tqdm(list(zip(prompts, sampling)), desc="one at a time")])

        ids = torch.tensor(prompts)

        def hf_generate():
            with torch.inference_mode():
                hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.max_new,
                                  min_new_tokens=args.max_new, pad_token_id=0)

        results[f"transformers generate ({args.threads} threads)"] = timed(hf_generate)

    base = results["one static batch"]
    print(f"\n{'side':<34} {'tokens/s':>9} {'last done s':>12} {'vs static':>10}")
    for name, seconds in results.items():
        print(f"{name:<34} {wanted / seconds:>9.1f} {seconds:>12.2f} {base / seconds:>9.2f}x")
    hf = next(v for k, v in results.items() if k.startswith("transformers"))
    cont = results["continuous batching (server)"]
    print(f"continuous / static batch: {base / cont:.2f}x (goal >= 1.5x); continuous / transformers: "
          f"{hf / cont:.2f}x (goal >= 2x); continuous / one at a time: {results['one at a time'] / cont:.2f}x")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
