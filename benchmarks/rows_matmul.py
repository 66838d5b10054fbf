"""The weight matmuls of one batch-8 decode step: XLA's dot as `models.decode` runs it, against a
hand-written AVX-512 kernel, on the same weights.

At a few rows a decode step is mostly its weight matmuls: every weight is read once and used for
2 x rows FLOPs. This times all of them (the ~100M benchmark model's 12 layers and its unembedding,
403 MB) both ways, interleaved, and prints each side's rate against the memory bandwidth and the
matmul peak measured in the same run:
  xla:    `models.decode.dense_out_in`, each weight [out, in] the left operand of its dot, all the
          matmuls in one jitted call;
  kernel: C with AVX-512 intrinsics on OpenMP threads, over weights packed once into 32-column
          panels [out / 32, in, 32]: rows x 32 columns of accumulators in registers, each weight
          read once, in order (compiled here with the system's C compiler).
The kernel is a yardstick for what this CPU allows, not a path of the model.

    python benchmarks/rows_matmul.py [--rows 8] [--repeats 20]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import QWEN3_100M  # noqa: E402
from benchmarks.decode import memory_bandwidth  # noqa: E402
from benchmarks.train_step import matmul_peak  # noqa: E402
from models.decode import dense_out_in  # noqa: E402

PANEL = 32  # columns per panel: two 16-float registers per row

KERNEL_C = r"""
#include <immintrin.h>
#include <omp.h>
#define ROWS %(rows)d
/* y[ROWS][O] = x[ROWS][I] W^T with W packed as panels [O/32][I][32]. */
static void panels(const float* x, const float* w_panels, float* y, int I, int O, int p0, int p1) {
  for (int p = p0; p < p1; p++) {
    const float* w = w_panels + (long)p * I * 32;
    __m512 acc[ROWS][2];
    for (int m = 0; m < ROWS; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    for (int i = 0; i < I; i++) {
      __m512 w0 = _mm512_loadu_ps(w + 32 * i), w1 = _mm512_loadu_ps(w + 32 * i + 16);
      for (int m = 0; m < ROWS; m++) {
        __m512 xm = _mm512_set1_ps(x[m * I + i]);
        acc[m][0] = _mm512_fmadd_ps(w0, xm, acc[m][0]);
        acc[m][1] = _mm512_fmadd_ps(w1, xm, acc[m][1]);
      }
    }
    for (int m = 0; m < ROWS; m++) {
      _mm512_storeu_ps(y + (long)m * O + 32 * p, acc[m][0]);
      _mm512_storeu_ps(y + (long)m * O + 32 * p + 16, acc[m][1]);
    }
  }
}
void matmul_rows(const float* x, const float* w_panels, float* y, int I, int O) {
  int n = O / 32;
  #pragma omp parallel
  { int t = omp_get_thread_num(), T = omp_get_num_threads(); panels(x, w_panels, y, I, O, n * t / T, n * (t + 1) / T); }
}
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, default=8, help="rows of every matmul (the decode batch), 1-12")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per side, interleaved; the best is reported")
    args = p.parse_args(argv)
    if not 1 <= args.rows <= 12:  # 2 x rows accumulators + 3 more must fit the 32 vector registers
        p.error(f"--rows {args.rows}: must be 1-12")
    return args


def step_weights(hf: dict) -> list[tuple[int, int]]:
    """[out, in] of every matmul weight one decode step reads: q, k, v, o, gate, up, down per layer,
    then the unembedding."""
    D, F, V = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    NH, KH = hf["num_attention_heads"] * hf["head_dim"], hf["num_key_value_heads"] * hf["head_dim"]
    layer = [(NH, D), (KH, D), (KH, D), (D, NH), (F, D), (F, D), (D, F)]
    return layer * hf["num_hidden_layers"] + [(V, D)]


def build_kernel(rows: int, folder: Path):
    """The C kernel compiled for this CPU, or None and the reason it cannot run here."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() != "x86_64" or " avx512f" not in flags:
        return None, "needs an x86-64 CPU with AVX-512"
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None, "no C compiler (set CC)"
    src, lib = folder / "matmul_rows.c", folder / "matmul_rows.so"
    src.write_text(KERNEL_C % {"rows": rows})
    done = subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(lib), str(src)],
                          capture_output=True, text=True)
    if done.returncode:
        return None, f"{cc} failed: {done.stderr.strip()[-500:]}"
    return ctypes.CDLL(str(lib)), ""


def main(argv=None) -> None:
    args = parse_args(argv)
    M, shapes = args.rows, step_weights(QWEN3_100M)
    assert all(out % PANEL == 0 for out, _ in shapes), shapes
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    xs = [rng.standard_normal((M, s[1]), dtype=np.float32) for s in shapes]
    nbytes = sum(w.nbytes for w in weights)
    flops = 2.0 * M * nbytes / 4
    print(f"{len(shapes)} matmuls [{M}, in] x [in, out] of the ~100M Qwen3 ({nbytes / 1e6:.0f} MB of float32 weights, "
          f"{flops / 1e9:.2f} GFLOP), {os.cpu_count()} cores, jax {jax.__version__}")

    w_jax, x_jax = [jnp.asarray(w) for w in weights], [jnp.asarray(x) for x in xs]
    xla = jax.jit(lambda xs, ws: [dense_out_in(x, w) for x, w in zip(xs, ws)])
    sides = {"xla": lambda: jax.block_until_ready(xla(x_jax, w_jax))}
    with tempfile.TemporaryDirectory() as folder:
        lib, why = build_kernel(M, Path(folder))
    if lib is None:
        print(f"kernel: skipped, {why}")
    else:
        packed = [np.ascontiguousarray(w.reshape(w.shape[0] // PANEL, PANEL, w.shape[1]).transpose(0, 2, 1))
                  for w in weights]
        outs = [np.empty((M, w.shape[0]), np.float32) for w in weights]
        ptr = ctypes.POINTER(ctypes.c_float)

        def kernel():
            for x, p, y, w in zip(xs, packed, outs, weights):
                lib.matmul_rows(x.ctypes.data_as(ptr), p.ctypes.data_as(ptr), y.ctypes.data_as(ptr), w.shape[1], w.shape[0])

        kernel()
        error = max(np.abs(y - x @ w.T).max() / np.abs(x @ w.T).max() for x, y, w in zip(xs, outs, weights))
        if error > 1e-5:
            raise SystemExit(f"kernel: wrong result, relative error {error:.2e}")
        sides["kernel"] = kernel

    bandwidth, how = memory_bandwidth()
    peak = matmul_peak(2048, 5, os.cpu_count(), with_torch=False)["jax"]
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s ({how}): the weights stream in {nbytes / bandwidth * 1e3:.1f} ms; "
          f"matmul peak (jax, float32 2048^3) {peak / 1e9:.0f} GFLOP/s: the arithmetic takes {flops / peak * 1e3:.1f} ms")
    for fn in sides.values():
        fn()
    times = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            time.sleep(0.05)  # the other side's idle threads stop spinning on these cores
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    limit = nbytes / bandwidth
    print(f"{'side':<8} {'ms':>7} {'GB/s':>6} {'GFLOP/s':>8} {'% peak':>7} {'x limit':>8}  (best of {args.repeats})")
    for name, t in times.items():
        best = min(t)
        print(f"{name:<8} {best * 1e3:>7.2f} {nbytes / best / 1e9:>6.1f} {flops / best / 1e9:>8.0f} "
              f"{flops / best / peak:>7.0%} {best / limit:>8.2f}")
    if "kernel" in times:
        print(f"xla / kernel: {min(times['xla']) / min(times['kernel']):.2f}x the time")


if __name__ == "__main__":
    main()
