"""Chips and slices: what a topology name means, its compile-only devices, and the next bigger slice.

    v5p-8      Cloud TPU naming: v5p counts TensorCores, 2 per chip, one JAX device per chip (megacore),
               so v5p-8 is 4 chips ("v5p:2x2x1"); v6e-8 counts chips (one TensorCore each): "v6e:2x4".
    v5p:2x2x1  a libtpu topology name, passed through.
    cpu:8      8 simulated CPU devices standing in for an 8-GPU node (default H100 80 GB): the CPU
               backend's memory figures are an estimate of what the GPU compiler would allocate.

Peak FLOP/s are the vendors' published figures (docs/scale.md cites them); HBM is what libtpu's
compiler says a program may use ("exceeds available HBM (95.74G)"), a little under the published
95 GB / 32 GB per chip; a GPU's is --hbm (default 80 GB, an H100).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GB, GIB = 10**9, 2**30
MAX_CPU_DEVICES = 256  # cpu:N simulates N (and the search up to 16 N) devices in this process


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_flops: float          # dense bf16 FLOP/s per chip (one JAX device)
    cores_per_chip: int = 1    # how the Cloud TPU name counts (v5p-8 = 8 TensorCores = 4 chips)
    dims: int = 2              # torus dimensions of the slice shape


CHIPS = {
    "v5p": Chip("TPU v5p", int(95.74 * GIB), 459e12, cores_per_chip=2, dims=3),
    "v6e": Chip("TPU v6e", int(31.25 * GIB), 918e12),
    "gpu": Chip("H100 80 GB", 80 * GB, 989e12),  # SXM dense bf16; the cpu:N stand-in, --hbm / --peak change it
}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str          # as the user wrote it: "v5p-8", "v6e:2x4", "cpu:8"
    kind: str          # a CHIPS key
    chips: int         # JAX devices
    shape: str         # libtpu topology ("2x2x1"); "" for cpu
    chip: Chip

    @property
    def estimate(self) -> bool:
        """A CPU-backend compile standing in for GPUs."""
        return not self.shape

    @property
    def label(self) -> str:
        if self.estimate:
            return f"{self.name} ({self.chips} x {self.chip.name}, CPU-backend estimate)"
        return f"{self.name} ({self.chip.name}, {self.chips} chips, {self.kind}:{self.shape})"

    @property
    def cloud_name(self) -> str:
        """v5p-8 / v6e-8 / cpu:8, whatever name was given."""
        if self.estimate:
            return f"cpu:{self.chips}"
        return f"{self.kind}-{self.chips * self.chip.cores_per_chip}"


def slice_shape(kind: str, chips: int) -> str:
    """The usual slice shape of `chips` chips (a power of two): doubling the last of the smallest axes,
    so v5p grows 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 and v6e 2x2, 2x4, 4x4, 4x8."""
    if chips < 1 or chips & (chips - 1):
        example = "2x2x1" if CHIPS[kind].dims == 3 else "2x4"
        raise ValueError(f"{kind}: {chips} chips is not a power of two; give the shape, e.g. {kind}:{example}")
    sizes, have = ([2, 2, 1], 4) if CHIPS[kind].dims == 3 and chips >= 4 else ([1] * CHIPS[kind].dims, 1)
    while have < chips:
        smallest = min(sizes)
        sizes[max(i for i, s in enumerate(sizes) if s == smallest)] *= 2
        have *= 2
    return "x".join(map(str, sizes))


def parse(spec: str, *, hbm_gb: float | None = None, peak_tflops: float | None = None) -> Topology:
    """"v5p-8", "v6e-8", "v5p:2x2x1", "v6e:2x4" or "cpu:8"; hbm_gb / peak_tflops override the chip's."""
    spec = spec.strip()
    m_cloud = re.fullmatch(r"(v5p|v6e)-(\d+)", spec, re.ASCII)
    m_shape = re.fullmatch(r"(v5p|v6e):(\d+(?:x\d+)+)", spec, re.ASCII)
    m_cpu = re.fullmatch(r"(?:cpu|gpu):(\d+)", spec, re.ASCII)
    if m_cloud:
        kind, count = m_cloud[1], int(m_cloud[2])
        per = CHIPS[kind].cores_per_chip
        if count % per:
            raise ValueError(f"topology {spec}: {kind} names count TensorCores, {per} per chip; {count} is not a multiple")
        chips = count // per
        if kind == "v5p" and chips < 4:
            raise ValueError(f"topology {spec}: the smallest v5p slice is v5p-8 (4 chips, v5p:2x2x1)")
        shape = slice_shape(kind, chips)
    elif m_shape:
        kind, shape = m_shape[1], m_shape[2]
        sizes = [int(d) for d in shape.split("x")]
        if len(sizes) != CHIPS[kind].dims or min(sizes) < 1:
            example = "2x2x1" if CHIPS[kind].dims == 3 else "2x4"
            raise ValueError(f"topology {spec}: a {kind} shape has {CHIPS[kind].dims} sizes of at least 1, "
                             f"e.g. {kind}:{example}")
        chips = math.prod(sizes)
    elif m_cpu:
        kind, chips, shape = "gpu", int(m_cpu[1]), ""
        if not 1 <= chips <= MAX_CPU_DEVICES:
            raise ValueError(f"topology {spec}: cpu:N takes 1 to {MAX_CPU_DEVICES} devices")
    else:
        raise ValueError(f"unknown topology {spec!r}: expected v5p-N, v6e-N (Cloud TPU names), "
                         f"v5p:AxBxC / v6e:AxB (libtpu shapes) or cpu:N (N GPUs estimated on CPU)")
    chip = CHIPS[kind]
    if hbm_gb is not None:
        chip = dataclasses.replace(chip, hbm_bytes=int(hbm_gb * GB), name=f"{chip.name.split(' ')[0]} {hbm_gb:g} GB"
                                   if kind == "gpu" else chip.name)
    if peak_tflops is not None:
        chip = dataclasses.replace(chip, peak_flops=peak_tflops * 1e12)
    return Topology(spec, kind, chips, shape, chip)


def bigger(topo: Topology) -> Topology:
    """The slice with twice the chips, same chip figures."""
    if topo.estimate:
        return dataclasses.replace(topo, name=f"cpu:{topo.chips * 2}", chips=topo.chips * 2)
    chips = topo.chips * 2
    return dataclasses.replace(topo, name=f"{topo.kind}-{chips * topo.chip.cores_per_chip}", chips=chips,
                               shape=slice_shape(topo.kind, chips))


def _quiet_libtpu() -> None:
    """libtpu looks for a TPU host and warns when there is none; compile-only use needs neither, and
    its lock file would stop two compiling processes on one machine."""
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_missing() -> str:
    """Why TPU targets cannot compile here ("" when they can)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return "libtpu is not installed (pip install -e '.[dev]' installs the version jax[tpu] pins)"
    return ""


def devices(topo: Topology) -> list:
    """The slice's devices: compile-only TPU devices from libtpu, or the first N CPU devices."""
    import jax
    if topo.estimate:
        cpus = jax.devices("cpu")
        if len(cpus) < topo.chips:
            raise RuntimeError(f"topology {topo.name} needs {topo.chips} CPU devices, this process has {len(cpus)}: "
                               f"set XLA_FLAGS=--xla_force_host_platform_device_count={topo.chips} before jax "
                               f"starts (python -m rl.plan does)")
        return cpus[:topo.chips]
    missing = libtpu_missing()
    if missing:
        raise RuntimeError(f"topology {topo.name}: {missing}")
    _quiet_libtpu()
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(f"{topo.kind}:{topo.shape}", "tpu").devices)
