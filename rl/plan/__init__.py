"""`python -m rl.plan`: compile an experiment's real update ahead of time for a TPU slice or a GPU-sized
CPU mesh, without the hardware, and say whether it fits and how fast it should run.

- `topology.py`: chip specs (HBM, peak bf16 FLOP/s) and the compile-only devices of a slice.
- `arith.py`: what the update must hold and compute, from the model shapes alone.
- `compile.py`: the abstract batch, the AOT compile through rl.trainer.Trainer, XLA's figures.
- `search.py`: micro-batch / remat candidates and bigger slices, compiled until one fits.
- `report.py`: the tables.
This package imports no jax at import time: `__main__` sets JAX_PLATFORMS and XLA_FLAGS first.
"""
