"""RL objectives as plain JAX functions of arrays, picked by name: see docs/objectives.md."""
from rl.losses.advantages import compute_advantages, groups_with_signal
# Importing objectives registers the built-in objectives.
from rl.losses.objectives import Surrogate, clipped_surrogate, sequence_mean, token_mean
from rl.losses.overlong import OVERLONG_MODES, apply_overlong_filter
from rl.losses.policy import loss_normalizers, policy_loss
from rl.losses.registry import OBJECTIVES, Objective, alias, get_objective, register

__all__ = [
    "OBJECTIVES", "OVERLONG_MODES", "Objective", "Surrogate", "alias", "apply_overlong_filter",
    "clipped_surrogate", "compute_advantages", "get_objective", "groups_with_signal",
    "loss_normalizers", "policy_loss", "register", "sequence_mean", "token_mean",
]
