"""Activation memory per token per layer of the training forward/backward: compiled against arithmetic.

AOT-compiles value_and_grad of a loss over models' layer stack for a TPU topology (libtpu, nothing
allocated; MaxText's train_compile does the same) or for N fake CPU devices, with abstract sharded
params (pure FSDP) and one sequence per chip, at two layer counts x two lengths per remat policy.
XLA's temporary bytes per device are split into a + b L + c T + d L T (models.memory.bilinear):
d, bytes per token per layer, is set against the arithmetic, the residuals JAX saves per layer
(models.memory.saved_residual_bytes; remat "full": one [T, D] copy of the residual stream). The
largest buffers of the biggest compile come from XLA's memory-usage report.

    python -m benchmarks.activation_memory                          # Qwen3-14B shapes, v5p:2x2x1, all policies
    python -m benchmarks.activation_memory --remat full --layers 2 4 --tokens 4096 8192
    python -m benchmarks.activation_memory --topology cpu:4         # CPU-backend estimate, no libtpu needed
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

QWEN3_14B = dict(arch="qwen3", vocab_size=151936, hidden_size=5120, intermediate_size=17408, num_layers=40,
                 num_heads=40, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=40960)
GIB = 2**30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--topology", default="v5p:2x2x1",
                   help="a TPU topology for jax.experimental.topologies (needs libtpu), or cpu:N fake CPU devices")
    p.add_argument("--config", help="a Hugging Face config.json (default: Qwen3-14B's shapes)")
    p.add_argument("--layers", type=int, nargs=2, default=(20, 40), help="two layer counts")
    p.add_argument("--tokens", type=int, nargs=2, default=(4096, 16384), help="two sequence lengths (per chip)")
    p.add_argument("--remat", nargs="+", default=("full", "matmuls", "none"), help="remat policies to compile")
    p.add_argument("--loss", default="hidden", choices=("hidden", "logprobs"),
                   help="sum(hidden_states**2), or sum of token_logprobs (adds the logprob head)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--attention", default="blockwise")
    p.add_argument("--top", type=int, default=10, help="largest buffers to list from the biggest compile")
    return p.parse_args(argv)


def setup_devices(topology: str):
    """The devices to compile for; cpu:N sets XLA's fake device count, so call before importing jax."""
    if topology.startswith("cpu:"):
        n = int(topology.split(":", 1)[1])
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        import jax
        return jax.devices("cpu")[:n]
    if importlib.util.find_spec("libtpu") is None:
        sys.exit(f"skipped: --topology {topology} compiles for TPU, which needs libtpu "
                 "(pip install 'jax[tpu]'); use --topology cpu:N for a CPU-backend estimate")
    # Compiling touches no chip: let other processes (tests, the planner) hold libtpu at the same time.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology, platform="tpu").devices


def largest_buffers(dump_dir: Path, top: int) -> list[str]:
    """The `top` largest rows of XLA's memory-usage report (offset ranges of device memory, each with
    the shapes that live there over time); empty when the backend writes no report."""
    reports = sorted(dump_dir.glob("*memory-usage-report.txt"), key=lambda p: p.stat().st_size)
    if not reports:
        return []
    rows = []
    for line in reports[-1].read_text().splitlines():
        parts = [s.strip() for s in line.split(";")]
        if len(parts) == 5 and re.fullmatch(r"[\d.]+[KMG]?i?B", parts[1]):
            rows.append((parts[1], parts[4]))
        elif rows and not line.strip():
            break  # the first table covers the whole memory space; later ones are per allocation
    return [f"{size:>10}  {shapes}" for size, shapes in rows[:top]]


def main(argv=None):
    a = parse_args(argv)
    devices = setup_devices(a.topology)
    import jax

    import models
    from models.memory import bilinear, saved_residual_bytes, train_temp_bytes

    runtime = dict(dtype=a.dtype, param_dtype=a.param_dtype, attention=a.attention)
    base = (models.ModelConfig.from_file(a.config, **runtime) if a.config else
            models.ModelConfig(**QWEN3_14B, **runtime))
    mesh = models.make_mesh(devices=devices)
    residual = base.hidden_size * jax.numpy.dtype(a.dtype).itemsize  # one [T, D] copy, per token
    print(f"{a.config or 'Qwen3-14B shapes'}: D={base.hidden_size} F={base.intermediate_size} "
          f"heads={base.num_heads}/{base.num_kv_heads} {a.param_dtype} params, {a.dtype} compute, "
          f"{a.attention} attention, loss={a.loss}; {len(devices)} x {devices[0].device_kind} ({a.topology}), "
          f"pure FSDP, one sequence per chip; one [T, D] residual = {residual} B/token")
    rows, dumps = [], tempfile.TemporaryDirectory(prefix="activation_memory_")
    for remat in a.remat:
        cfg = base.replace(remat=remat)

        def measured(L, T):
            biggest = (L, T) == (a.layers[1], a.tokens[1])  # XLA's buffer report for this corner only
            options = {"xla_dump_to": f"{dumps.name}/{remat}"} if biggest else None
            temp = train_temp_bytes(cfg.replace(num_layers=L), mesh, T, a.loss, compiler_options=options)
            print(f"  remat={remat} L={L} T={T}: temporaries {temp / GIB:.2f} GiB", flush=True)
            return temp

        got = bilinear(measured, tuple(a.layers), tuple(a.tokens))
        want = bilinear(lambda L, T: saved_residual_bytes(cfg.replace(num_layers=L), T),
                        tuple(a.layers), tuple(a.tokens))
        rows.append((remat, got, want))

    print(f"\nbytes per token per layer (d in a + b L + c T + d L T, over L in {a.layers}, T in {a.tokens})")
    print(f"{'remat':<8} {'measured':>10} {'arithmetic':>10} {'ratio':>6} {'[T,D] copies':>12} "
          f"{'per token (c)':>14} {'per layer (b)':>14}")
    for remat, got, want in rows:
        print(f"{remat:<8} {got['d']:>10.0f} {want['d']:>10.0f} {got['d'] / want['d']:>6.2f} "
              f"{got['d'] / residual:>12.2f} {got['c'] / 2**10:>10.1f} KiB {got['b'] / 2**20:>10.1f} MiB")
    for remat in a.remat:
        lines = largest_buffers(Path(dumps.name, remat), a.top)
        if lines:
            print(f"\nlargest buffers, remat={remat}, L={a.layers[1]}, T={a.tokens[1]} (XLA memory-usage report; "
                  f"a leading {a.layers[1]} is a buffer stacked over layers):")
            print("\n".join(lines))
    dumps.cleanup()


if __name__ == "__main__":
    main()
