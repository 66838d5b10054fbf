"""The full policy update (rl.trainer) against a plain forward + backward and the matmul peak, side by
side, on the ~100M benchmark model; then what sequence packing saves on mixed-length batches.

1. Update throughput. Both sides see the same weights and the same 8 x 512 tokens (64 prompt + 448
   response tokens a row), float32, blockwise attention in 64-token tiles, interleaved, median step:
     update:   Trainer.update: DAPO loss from chunked token logprobs, 2 micro-batches accumulated
               under lax.scan, global norm clip, AdamW; one jitted call, state donated
     fwd+bwd:  benchmarks.train_step's step: value_and_grad of next-token cross-entropy on full logits
   % peak = model FLOPs of one step (benchmarks.train_step.step_flops: weights, lm_head, attention;
   remat and the optimizer not counted) / step time / the jitted float32 matmul peak measured right
   before that step (the machine is shared: a peak measured once drifts with the load); the median
   over steps is reported, with the load average of each step, and beside it the conservative figure
   against the highest probe of the run.
2. Packing at full scale (no model run): the padding fraction of a realistic RL batch, 256 rollouts
   (32 prompts x 8) with 100-1,000 prompt tokens and log-uniform 200-40,000 response tokens, 15% cut
   at the 40,000 limit: one rollout per 41,000-token row versus packed into such rows.
3. Packing measured: the update on 16 rollouts of 32-1,024 tokens (blockwise attention, full remat),
   padded versus packed into 1,024-token rows: real tokens per second of each, and the ratio.

The process runs itself again with glibc's huge-page tunable first (rl/hugepages.py), as
`python -m rl.train`, `rl.serve` and `rl.evaluate` do.

    .venv/bin/python -m benchmarks.update_step            # ~100M Qwen3, all three parts
    .venv/bin/python -m benchmarks.update_step --quick    # a small config, a smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QWEN3_100M, QWEN3_QUICK  # noqa: E402
from benchmarks.train_step import jax_step_fn, matmul_peak, step_flops, timed  # noqa: E402
from rl.hugepages import reexec_with_huge_pages, thp_mode  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--batch", type=int, default=8, help="sequences per update (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; 128 with --quick)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens of each sequence (default seq-len / 8)")
    p.add_argument("--micro-batches", type=int, default=2, help="gradient accumulation steps (default 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side, interleaved (default 3)")
    p.add_argument("--remat", default="none", choices=("none", "full", "matmuls"), help="remat policy (default none)")
    p.add_argument("--attention", default="blockwise", choices=("auto", "reference", "blockwise"),
                   help="attention path of both sides (default blockwise: faster than reference at 512 tokens, "
                        "its tiles above the causal diagonal skipped; auto: reference below blockwise_min_len)")
    p.add_argument("--attention-block", type=int, default=64,
                   help="blockwise tile of both sides (default 64: the fastest here at 512 tokens, 36 of a row's "
                        "64 tiles computed)")
    p.add_argument("--matmul-size", type=int, default=2048, help="M of the [M,M]@[M,M] peak probe (default 2048)")
    p.add_argument("--matmul-repeats", type=int, default=10, help="repeats of the peak probe (default 10)")
    p.add_argument("--skip-packing-run", action="store_true", help="skip part 3 (two more compiles)")
    p.add_argument("--quick", action="store_true", help="small config and batch: a smoke test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.seq_len = args.seq_len or (128 if args.quick else 512)
    args.prompt_len = args.prompt_len or args.seq_len // 8
    args.steps = args.steps or 3
    if not 0 < args.prompt_len < args.seq_len:
        p.error(f"--prompt-len {args.prompt_len} must be in (0, seq-len={args.seq_len})")
    return args


def model(hf: dict, **runtime):
    import jax

    import models
    cfg = models.ModelConfig.from_hf_dict(dict(hf, architectures=["Qwen3ForCausalLM"], rope_theta=1e6,
                                               rms_norm_eps=1e-6, max_position_embeddings=4096), **runtime)
    return cfg, jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))


def trainer(cfg, micro_batches: int, pack: bool, row_len: int = 0):
    import jax

    import models
    from rl.experiment import BatchSection, Experiment, ObjectiveSection
    from rl.trainer import Trainer
    exp = Experiment(objective=ObjectiveSection(name="dapo", tis_cap=2.0),
                     batch=BatchSection(micro_batches=micro_batches, pack=pack, max_tokens_per_row=row_len))
    return Trainer(exp, cfg, models.make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def rollouts(rng, vocab: int, prompt_lens, response_lens):
    from rl.packing import Sample
    return [Sample(rng.integers(0, vocab, p), rng.integers(0, vocab, r), -3.0 - rng.random(r),
                   float(rng.standard_normal()), False) for p, r in zip(prompt_lens, response_lens)]


def update_vs_forward_backward(args, hf, cfg, params, probe) -> None:
    """probe(): the matmul peak now, FLOP/s."""
    import jax

    rng = np.random.default_rng(args.seed)
    B, T, P = args.batch, args.seq_len, args.prompt_len
    samples = rollouts(rng, hf["vocab_size"], [P] * B, [T - P] * B)
    tr = trainer(cfg, args.micro_batches, pack=False)
    batch = tr.pack(samples)
    assert batch.tokens.shape[-1] == T, batch.shape
    state = tr.init_state(params)
    tokens = jax.numpy.asarray(np.concatenate([batch.tokens[0, m] for m in range(args.micro_batches)]))
    plain = jax_step_fn(cfg)
    holder = {"state": state}

    def update_once():
        holder["state"], metrics = tr.update(holder["state"], batch)
        jax.block_until_ready(metrics)

    def plain_once():
        jax.block_until_ready(plain(params, tokens))

    sides = {"update": update_once, "fwd+bwd": plain_once}
    first = {name: timed(fn) for name, fn in sides.items()}
    print("first step (compile + run): " + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()), flush=True)
    flops = step_flops(hf, B, T)["total"]
    times, pct, peaks = {name: [] for name in sides}, {name: [] for name in sides}, []
    for i in range(args.steps):
        for name, fn in sides.items():
            peak = probe()  # right before the step: the share of the cores it gets now
            peaks.append(peak)
            times[name].append(timed(fn))
            pct[name].append(100 * flops / times[name][-1] / peak)
            print(f"step {i + 1}/{args.steps} {name}: {times[name][-1]:.2f} s, peak {peak / 1e9:.1f} GFLOP/s, "
                  f"{pct[name][-1]:.1f}% of it, load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\nmodel FLOPs per step {flops:.4g}")
    print(f"{'side':<10} {'median s':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'% peak':>7}  (% peak: median over steps)")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, s in med.items():
        print(f"{name:<10} {s:9.3f} {B * T / s:9.0f} {flops / s / 1e9:8.1f} {statistics.median(pct[name]):6.1f}%")
    ratios = [u / f for u, f in zip(times["update"], times["fwd+bwd"])]
    print(f"update / fwd+bwd time: {med['update'] / med['fwd+bwd']:.3f}x (step by step "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); update at {statistics.median(pct['update']):.1f}% of matmul "
          f"peak (goal >= 65%)")
    # The per-step probe drifts with the machine; the run's highest probe gives the conservative figure.
    print(f"against the run's highest probe ({max(peaks) / 1e9:.1f} GFLOP/s): update "
          f"{100 * flops / med['update'] / max(peaks):.1f}%, fwd+bwd {100 * flops / med['fwd+bwd'] / max(peaks):.1f}%")


def padding_at_scale(rng) -> None:
    from rl.packing import pack, padding_fraction

    n, limit, row = 256, 40_000, 41_000
    prompt = rng.integers(100, 1_001, n)
    response = np.exp(rng.uniform(np.log(200), np.log(limit), n)).astype(int)
    response[rng.random(n) < 0.15] = limit
    # Token ids do not matter to the layout: tiny stand-ins keep this part light.
    samples = [_layout_only(p, r) for p, r in zip(prompt, response)]
    padded, packed = pack(samples, pack=False, row_len=row), pack(samples, pack=True, row_len=row)
    pf, kf = padding_fraction(padded), padding_fraction(packed)
    real = int(prompt.sum() + response.sum())
    print(f"\npacking at scale: {n} rollouts, {real:,} real tokens (mean {real / n:,.0f}, longest "
          f"{int((prompt + response).max()):,})")
    print(f"  one rollout per {row:,}-token row: {padded.segment_ids.size:,} slots, {100 * pf:.1f}% padding")
    print(f"  packed into {row:,}-token rows: {packed.segment_ids.size:,} slots ({packed.shape['rows']} rows), "
          f"{100 * kf:.1f}% padding")
    print(f"  token slots (MLP / projection compute) saved: {padded.segment_ids.size / packed.segment_ids.size:.2f}x")


def _layout_only(prompt_len: int, response_len: int):
    from rl.packing import Sample
    return Sample(np.ones(prompt_len, np.int32), np.ones(response_len, np.int32), np.zeros(response_len),
                  0.0, False)


def packing_measured(args, hf, cfg, params) -> None:
    import jax

    from rl.packing import padding_fraction
    rng = np.random.default_rng(args.seed + 1)
    row = 2 * args.seq_len if args.quick else 1024
    total = rng.integers(row // 32, row + 1, 16)
    prompt = np.minimum(rng.integers(16, 129, 16), total // 2)
    samples = rollouts(rng, hf["vocab_size"], prompt, total - prompt)
    real = int(total.sum())
    print(f"\npacking measured: 16 rollouts of {total.min()}-{total.max()} tokens ({real:,} in all), rows of {row}")
    # Long-context settings, as the experiments run them: blockwise attention (which skips the key
    # tiles of other segments) and full remat; reference attention's [T, S] scores per layer do not fit.
    cfg = cfg.replace(attention="blockwise", attention_block=128, remat="full")
    results = {}
    for name, pack in (("padded", False), ("packed", True)):
        tr = trainer(cfg, 1, pack=pack, row_len=row if pack else 0)
        batch = tr.pack(samples)
        holder = {"state": tr.init_state(params)}

        def once():
            holder["state"], metrics = tr.update(holder["state"], batch)
            jax.block_until_ready(metrics)

        timed(once)  # compile
        s = statistics.median(timed(once) for _ in range(args.steps))
        results[name] = s
        print(f"  {name}: {batch.shape['rows']} rows x {batch.shape['row_len']}, "
              f"{100 * padding_fraction(batch):.1f}% padding, {s:.2f} s, {real / s:.0f} real tokens/s", flush=True)
    print(f"  packed / padded throughput: {results['padded'] / results['packed']:.2f}x")


def main(argv=None):
    args = parse_args(argv)
    import jax
    hf = QWEN3_QUICK if args.quick else QWEN3_100M
    print(f"jax {jax.__version__} ({jax.default_backend()}), cpu_count {os.cpu_count()}; config hidden "
          f"{hf['hidden_size']}, layers {hf['num_hidden_layers']}, vocab {hf['vocab_size']}; batch {args.batch} x "
          f"{args.seq_len}, {args.micro_batches} micro-batches, remat {args.remat}, attention {args.attention} "
          f"(tile {args.attention_block}); "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (THP {thp_mode() or 'absent'})")
    cfg, params = model(hf, remat=args.remat, attention=args.attention, attention_block=args.attention_block)
    update_vs_forward_backward(args, hf, cfg, params,
                               lambda: matmul_peak(args.matmul_size, args.matmul_repeats, os.cpu_count(), False)["jax"])
    padding_at_scale(np.random.default_rng(args.seed))
    if not args.skip_packing_run:
        packing_measured(args, hf, cfg, params)

if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
