"""Device mesh and the one table from logical axis names to mesh axes.

The mesh has three axes, the ones the experiments need: data (replicas), fsdp (parameters and
optimizer state sharded, batch split) and tensor (heads, MLP and vocab split).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from models.config import ModelConfig
from models.weights import full_axes, full_shape, map_weights, weight_table

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_TO_MESH = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "head_dim": None,
    "norm": None,
    None: None,
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh axes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {len(devices)}")
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def _mesh_group(name, mesh) -> tuple[tuple[str, ...], int]:
    """The mesh axes (those larger than 1) logical axis `name` splits over, and their product."""
    mesh_axes = LOGICAL_TO_MESH[name]
    group = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
    group = tuple(a for a in group if mesh.shape[a] > 1)
    return group, int(np.prod([mesh.shape[a] for a in group])) if group else 1


def spec_for(axes: tuple, shape: tuple[int, ...], mesh: Mesh | AbstractMesh) -> P:
    """PartitionSpec for logical `axes`; a dimension the mesh axis does not divide stays replicated."""
    parts = []
    for name, size in zip(axes, shape):
        group, n = _mesh_group(name, mesh)
        parts.append(None if not group or size % n else (group[0] if len(group) == 1 else group))
    return P(*parts)


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
    return map_weights(cfg, lambda w: NamedSharding(mesh, spec_for(full_axes(w), full_shape(w, cfg), mesh)))


def unsplit_weights(cfg: ModelConfig, mesh: Mesh | AbstractMesh) -> list[str]:
    """The weights a mesh axis should split but does not divide ("q: embed 5120 over fsdp=3"): every
    device on that axis then holds them whole, which at 14B is an out-of-memory with no other sign."""
    found = []
    for w in weight_table(cfg):
        for name, size in zip(full_axes(w), full_shape(w, cfg)):
            group, n = _mesh_group(name, mesh)
            if group and size % n and name != "kv_heads":  # fewer kv heads than tensor: copies by design
                found.append(f"{'.'.join(w.path)}: {name} {size} over {'x'.join(group)}={n}")
    return found


def params_mesh(params) -> AbstractMesh | None:
    """The mesh the model runs on while tracing: the context mesh (`jax.set_mesh`), else the mesh the
    params are laid out on (jit arguments that carry shardings); None when neither names one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        sharding = getattr(jax.typeof(jax.tree.leaves(params)[0]), "sharding", None)
        mesh = getattr(sharding, "mesh", mesh)
    return None if mesh.empty else mesh


def constrain(x, mesh: AbstractMesh | None, axes: tuple):
    """Pin an activation to the shards its logical `axes` name (a no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(axes, x.shape, mesh)))


def constrain_batch(x, mesh: AbstractMesh | None):
    """Pin an activation's leading (batch) axis to the (data, fsdp) shards, its other axes whole.
    Without it XLA propagates the embedding's feature sharding ("embed" -> fsdp) into the residual
    stream: every chip then holds the whole batch and all-reduces each layer's activations."""
    return constrain(x, mesh, ("batch",) + (None,) * (x.ndim - 1))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shard the leading (batch) axis over data and fsdp; the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
