"""Name -> objective registry, so an experiment file picks its objective with one string."""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered policy objective.

    surrogate(logp, old_logp, advantages, mask, **hyperparams) -> Surrogate, per-token terms [B, T];
    aggregate(loss_bt, mask, *, token_normalizer, sequence_normalizer) -> scalar loss;
    defaults: the objective's hyperparameters and their default values (e.g. eps_low, eps_high).
    """

    name: str
    surrogate: Callable
    aggregate: Callable
    defaults: dict


OBJECTIVES: dict[str, Objective] = {}


def _add(objective):
    # Every way into the registry goes through here, so no name is ever silently overwritten.
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective


def register(name, *, aggregate, **defaults):
    """Decorator registering a surrogate function under `name` with its aggregation and defaults."""

    def decorator(surrogate):
        _add(Objective(name, surrogate, aggregate, dict(defaults)))
        return surrogate

    return decorator


def alias(name, target):
    """Registers `name` as another name of the registered objective `target` (same defaults)."""
    if target not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES))
        raise KeyError(f"cannot alias {name!r} to unknown objective {target!r}; known: {known}")
    _add(dataclasses.replace(OBJECTIVES[target], name=name))


def get_objective(name):
    try:
        return OBJECTIVES[name]
    except KeyError:
        known = ", ".join(sorted(OBJECTIVES))
        raise KeyError(f"unknown objective {name!r}; known: {known}") from None
