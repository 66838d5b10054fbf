"""Forward + backward throughput of the JAX model against transformers (PyTorch), side by side.

One process builds a random Qwen3 checkpoint with transformers, saves it to a temporary folder and
loads it into JAX with `models.load_hf`, so both sides train the SAME weights on the SAME tokens.
The step is the mean next-token cross-entropy over the batch and its gradient w.r.t. every weight:

  JAX:   jax.jit(jax.value_and_grad(loss))(params, tokens), loss built on models.forward
  torch: model(input_ids, labels=input_ids).loss.backward(), grads zeroed between steps

Steps of the two sides are interleaved (jax, torch, jax, torch, ...) so that machine noise hits both
equally, and the median step time is reported. Compile time and the first steps are excluded.

The machine's matmul peak is a jitted float32 [M, M] @ [M, M] (median of repeats); the JAX step's
fraction of it uses the model FLOPs of one step (remat recomputation is not counted, MFU-style):

  6 * N_nonembedding * B*T            weight matmuls, forward (2) + backward (4)
  6 * D * V * B*T                     the lm_head (tied or not, it is a real [D, V] matmul)
  6 * L * (heads * head_dim) * T^2 * B   causal attention: QK^T and PV, 2 * 2 * B*T^2/2 * N*H each
                                      layer forward, times 3 for forward + backward

    .venv/bin/python -m benchmarks.train_step             # ~100M Qwen3, batch 4 x 512
    .venv/bin/python -m benchmarks.train_step --quick     # a tiny config, seconds
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QWEN3_100M, QWEN3_QUICK, random_qwen3_checkpoint  # noqa: E402
from rl.hugepages import reexec_with_huge_pages  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; 2 with --quick)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; 128 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side, interleaved (default 5; 3 quick)")
    p.add_argument("--warmup", type=int, default=0,
                   help="extra untimed steps per side after the first (compiling) one, which is never timed (default 0)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="parameter and compute dtype of both sides (default float32)")
    p.add_argument("--remat", default="none",
                   help="JAX remat policy, or a comma list to compare (none, full, matmuls; 'all' = all three). "
                        "The fastest one is the headline. Default: none")
    p.add_argument("--matmul-size", type=int, default=2048, help="M of the [M,M]@[M,M] peak probe (default 2048)")
    p.add_argument("--matmul-repeats", type=int, default=10, help="repeats of the peak probe (default 10)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default os.cpu_count())")
    p.add_argument("--no-torch", action="store_true", help="time the JAX side only")
    p.add_argument("--quick", action="store_true", help="tiny config and batch: a smoke test in seconds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 4)
    args.seq_len = args.seq_len or (128 if args.quick else 512)
    args.steps = args.steps or (3 if args.quick else 5)
    remats = ("none", "full", "matmuls") if args.remat == "all" else tuple(args.remat.split(","))
    for r in remats:
        if r not in ("none", "full", "matmuls"):
            p.error(f"--remat: unknown policy {r!r}")
    args.remats = remats
    return args


# ---- FLOPs -------------------------------------------------------------------------------------

def count_params(hf: dict) -> dict[str, int]:
    D, F, V, L = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"], hf["num_hidden_layers"]
    N, K, H = hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]
    per_layer = D * N * H + 2 * D * K * H + N * H * D + 3 * D * F + 2 * D + 2 * H  # q,k,v,o, mlp, norms, q/k norm
    embed = V * D
    lm_head = 0 if hf["tie_word_embeddings"] else V * D
    non_embedding = L * per_layer + D  # + final norm
    return dict(total=embed + lm_head + non_embedding, embedding=embed, lm_head=lm_head, non_embedding=non_embedding)


def step_flops(hf: dict, batch: int, seq: int) -> dict[str, float]:
    n = count_params(hf)
    tokens = batch * seq
    D, V, L = hf["hidden_size"], hf["vocab_size"], hf["num_hidden_layers"]
    NH = hf["num_attention_heads"] * hf["head_dim"]
    parts = dict(weights=6.0 * n["non_embedding"] * tokens, lm_head=6.0 * D * V * tokens,
                 attention=6.0 * L * NH * seq * seq * batch)
    parts["total"] = sum(parts.values())
    return parts


# ---- timing helpers ----------------------------------------------------------------------------

def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(m: int, repeats: int, threads: int, with_torch: bool = True) -> dict[str, float]:
    """Median FLOP/s of a float32 [m, m] @ [m, m], JAX (jitted) and torch, interleaved (JAX only
    without with_torch)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((m, m), dtype=np.float32) for _ in range(2))
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    if with_torch:
        import torch
        ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)
        torch.set_num_threads(threads)
        torch.matmul(ta, tb)
    jt, tt = [], []
    for _ in range(repeats):
        jt.append(timed(lambda: mm(a, b).block_until_ready()))
        if with_torch:
            tt.append(timed(lambda: torch.matmul(ta, tb)))
    flops = 2.0 * m ** 3
    return dict(jax=flops / statistics.median(jt), **({"torch": flops / statistics.median(tt)} if with_torch else {}))


# ---- the two sides -----------------------------------------------------------------------------

def jax_step_fn(cfg):
    import jax
    import jax.numpy as jnp

    import models

    def loss_fn(params, tokens_BT):
        logits_BTV = models.forward(params, cfg, tokens_BT)[:, :-1]
        targets_BT = tokens_BT[:, 1:]
        lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
        picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
        return jnp.mean(lse_BT - picked_BT)

    return jax.jit(jax.value_and_grad(loss_fn))


def run(args) -> dict:
    import jax
    import numpy as np
    import torch

    import models

    torch.set_num_threads(args.threads)
    hf = QWEN3_QUICK if args.quick else QWEN3_100M
    n = count_params(hf)
    flops = step_flops(hf, args.batch, args.seq_len)
    tokens_per_step = args.batch * args.seq_len
    print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device), torch {torch.__version__} "
          f"({args.threads} threads), cpu_count {os.cpu_count()}")
    print(f"config: Qwen3 hidden {hf['hidden_size']}, layers {hf['num_hidden_layers']}, heads "
          f"{hf['num_attention_heads']}/{hf['num_key_value_heads']} kv, head_dim {hf['head_dim']}, intermediate "
          f"{hf['intermediate_size']}, vocab {hf['vocab_size']}, tied {hf['tie_word_embeddings']}")
    print(f"parameters: {n['total']:,} total = {n['embedding']:,} embedding + {n['lm_head']:,} lm_head + "
          f"{n['non_embedding']:,} non-embedding")
    print(f"step: batch {args.batch} x {args.seq_len} = {tokens_per_step} tokens, dtype {args.dtype}, "
          f"model FLOPs {flops['total']:.4g} (weights {flops['weights']:.3g} + lm_head {flops['lm_head']:.3g} "
          f"+ attention {flops['attention']:.3g})")

    peak = matmul_peak(args.matmul_size, args.matmul_repeats, args.threads)
    print(f"matmul peak f32 {args.matmul_size}^3: jax {peak['jax'] / 1e9:.1f} GFLOP/s, torch "
          f"{peak['torch'] / 1e9:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        torch_model = random_qwen3_checkpoint(hf, Path(tmp), args.seed)  # float32 on disk
        torch_model = torch_model.to(getattr(torch, args.dtype)).train()
        cfg, params = models.load_hf(tmp, dtype=args.dtype)
    tokens = np.random.default_rng(args.seed).integers(0, hf["vocab_size"], (args.batch, args.seq_len),
                                                       dtype=np.int32)
    tokens_jax, tokens_torch = jax.numpy.asarray(tokens), torch.tensor(tokens, dtype=torch.long)

    sides, losses, compile_s = {}, {}, {}
    for remat in args.remats:
        step = jax_step_fn(cfg.replace(remat=remat))
        name = f"jax remat={remat}"

        def jax_once(step=step, name=name):
            loss, grads = step(params, tokens_jax)
            jax.block_until_ready(grads)
            losses[name] = float(loss)

        compile_s[name] = timed(jax_once)
        sides[name] = jax_once
        print(f"{name}: first step (compile + run) {compile_s[name]:.1f} s", flush=True)
    if not args.no_torch:
        def torch_once():
            torch_model.zero_grad(set_to_none=True)
            loss = torch_model(tokens_torch, labels=tokens_torch).loss
            loss.backward()
            losses["torch"] = float(loss.detach())

        compile_s["torch"] = timed(torch_once)
        sides["torch"] = torch_once
        print(f"torch: first step {compile_s['torch']:.1f} s", flush=True)
        print(f"torch attention implementation: {torch_model.config._attn_implementation}")

    for _ in range(args.warmup):
        for fn in sides.values():
            fn()
    times = {name: [] for name in sides}
    for i in range(args.steps):
        for name, fn in sides.items():  # interleaved: noise hits every side alike
            times[name].append(timed(fn))
        print(f"step {i + 1}/{args.steps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = dict(step_s=med, tokens_s=tokens_per_step / med, flops_s=flops["total"] / med,
                             first_s=compile_s[name], loss=losses[name], spread=(min(ts), max(ts)))
    return dict(results=results, peak=peak, flops=flops, params=n, hf=hf)


def report(args, out: dict) -> None:
    res, peak = out["results"], out["peak"]["jax"]
    jax_names = [k for k in res if k.startswith("jax")]
    best = min(jax_names, key=lambda k: res[k]["step_s"])
    print()
    print(f"{'side':<20} {'median s':>8} {'min-max s':>13} {'tokens/s':>9} {'best tok/s':>10} {'GFLOP/s':>8} "
          f"{'% peak':>7} {'first s':>8} {'loss':>9}")
    for name, r in res.items():
        print(f"{name:<20} {r['step_s']:8.3f} {r['spread'][0]:6.2f}-{r['spread'][1]:<6.2f} {r['tokens_s']:9.0f} "
              f"{r['tokens_s'] * r['step_s'] / r['spread'][0]:10.0f} {r['flops_s'] / 1e9:8.1f} "
              f"{100 * r['flops_s'] / peak:6.1f}% {r['first_s']:8.2f} {r['loss']:9.5f}")
    print(f"(tokens/s and GFLOP/s from the median step, 'best' from the fastest; % peak is of the JAX matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; 'first s' includes compilation)")
    print()
    print(f"best JAX: {best}: {res[best]['tokens_s']:.0f} tokens/s, "
          f"{100 * res[best]['flops_s'] / peak:.1f}% of matmul peak (goal >= 60%)")
    if "torch" in res:
        ratio = res[best]["tokens_s"] / res["torch"]["tokens_s"]
        print(f"JAX / transformers tokens/s: {ratio:.2f}x (goal > 1); |loss diff| "
              f"{abs(res[best]['loss'] - res['torch']['loss']):.2e}")


def main(argv=None):
    args = parse_args(argv)
    report(args, run(args))


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
