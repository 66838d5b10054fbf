"""The order in which training problems are drawn: a fresh seeded shuffle every epoch.

Its position (epoch, offset) is all a checkpoint needs to resume the data exactly where it stopped.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ProblemStream:
    size: int
    seed: int = 0
    epoch: int = 0
    offset: int = 0

    def __post_init__(self):
        if self.size <= 0:
            raise ValueError("no training problems: the stream is empty")

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def take(self, k: int) -> list[int]:
        """The next k problem indices (crossing into the next epoch's shuffle when needed)."""
        out = []
        while len(out) < k:
            order = self._order(self.epoch)
            n = min(k - len(out), self.size - self.offset)
            out.extend(order[self.offset:self.offset + n].tolist())
            self.offset += n
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def position(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "size": self.size}

    def restore(self, position: dict) -> None:
        if position.get("size", self.size) != self.size or position.get("seed", self.seed) != self.seed:
            raise ValueError(f"the checkpoint's data position {position} is for a different problem set or "
                             f"seed (now {self.size} problems, seed {self.seed})")
        self.epoch, self.offset = position["epoch"], position["offset"]

    @staticmethod
    def is_position(value) -> bool:
        """a data position: {"epoch": int >= 0, "offset": int >= 0, ...}"""
        return isinstance(value, dict) and all(
            type(value.get(k)) is int and value[k] >= 0 for k in ("epoch", "offset"))
