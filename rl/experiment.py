"""The typed experiment config: one frozen dataclass per section, composed into `Experiment`.

An experiment file in experiments/ builds an `Experiment`, usually by taking its base experiment and
replacing only what differs (see docs/experiments.md):

    from experiments import nouscoder_14b
    EXPERIMENT = nouscoder_14b.EXPERIMENT.replace(objective=dict(name="gspo"))

Below the schema: JSON round trip, loading a file or bare name, `--set key.path=value` overrides
and validation. Every error names the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import functools
import linecache
import math
import re
import sys
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, ConfigError, ModelConfig
from rl.data.filters import parse_window
from rl.data.prompts import STYLES
from rl.losses import OBJECTIVES, OVERLONG_MODES
from rl.reward import SHAPES

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO / "experiments"


@dataclass(frozen=True)
class ModelSection:
    path: str = ""                      # HF folder (config.json, safetensors, tokenizer files)
    dtype: str = "bfloat16"             # compute dtype
    param_dtype: str = "float32"        # master weights (f32 master, bf16 compute)
    remat: str = "full"                 # "none" | "full" | "matmuls"
    attention: str = "blockwise"        # "auto" | "reference" | "blockwise" | "cudnn"
    attention_block: int = 512          # blockwise tile, queries and keys (64 is fastest on CPU at 512 tokens)
    max_context: int = 0                # > native length: YaRN factor = max_context / native (0: native)


@dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1                      # -1: every device not used by the other axes
    tensor: int = 1


@dataclass(frozen=True)
class ObjectiveSection:
    name: str = "dapo"                  # a name registered in rl.losses
    eps_low: float | None = None        # None: the objective's default
    eps_high: float | None = None
    overlong: str = "zero_advantage"    # "zero_advantage" | "mask" | "none"
    kl_coef: float = 0.0                # > 0 keeps a frozen reference model
    tis_cap: float | None = None        # truncated importance sampling on rollout logprobs (None: off)


@dataclass(frozen=True)
class AdvantageSection:
    normalize_std: bool = True          # False: Dr. GRPO
    ddof: int = 1
    eps: float = 1e-6


@dataclass(frozen=True)
class DataSection:
    train: tuple[str, ...] = ()         # local problem files (json, jsonl, parquet)
    eval: tuple[str, ...] = ()          # held-out problems
    window: str = ""                    # training contest dates "YYYY-MM-DD:YYYY-MM-DD" or "lcb_v5" ("" = all)
    eval_window: str = ""               # the same for the held-out problems
    difficulties: tuple[str, ...] = ()  # keep only these (empty = all)
    dedup: bool = True                  # by problem text
    prompt: str = "lcb"                 # "lcb" (system prompt) | "r1" (everything in one user message)
    max_prompt_tokens: int = 2048       # longer prompts are dropped and counted
    thinking: bool = False              # the model thinks first: the answer follows the last </think>


@dataclass(frozen=True)
class RolloutSection:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int = 8192
    context_stages: tuple[str, ...] = ()  # "STEP:TOKENS": from STEP on, max_response_tokens = TOKENS
    servers: tuple[str, ...] = ()       # SGLang / router URLs; empty: start the embedded server
    max_concurrency: int = 256
    max_staleness: int = 0              # 0: on-policy; 1: one-step-off
    logprobs: bool = True               # keep the servers' token logprobs (TIS, mismatch metrics)
    dynamic_sampling: bool = True       # DAPO: drop all-equal groups and refill
    max_refill_rounds: int = 10         # sampling rounds per step, the first draw included (verl's max_num_gen_batches)
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95
    eval_n: int = 4                     # samples per held-out problem

    def max_response_tokens_at(self, step: int) -> int:
        """The response limit at training step `step`: the last context stage started, if any."""
        limit = self.max_response_tokens
        for start, tokens in parse_context_stages(self.context_stages):
            if step >= start:
                limit = tokens
        return limit


@dataclass(frozen=True)
class SandboxSection:
    time_limit: float = 15.0            # seconds per test (the seeds)
    memory_mb: int = 4096
    workers: int = 0                    # 0: one per core
    reward: str = "pm1"                 # "pm1" (+1 / -1) | "binary" (1 / 0, rllm) | "partial"


@dataclass(frozen=True)
class BatchSection:
    prompts_per_step: int = 32
    mini_batches: int = 1               # optimizer steps per batch of rollouts
    micro_batches: int = 1              # gradient accumulation per mini-batch
    pack: bool = True                   # several sequences per row
    max_tokens_per_row: int = 0         # packed row length (0: the longest prompt + response)


@dataclass(frozen=True)
class OptimizerSection:
    lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0


@dataclass(frozen=True)
class ScheduleSection:
    steps: int = 100
    eval_every: int = 10                # 0: only before RL (step 0) and at the end
    checkpoint_every: int = 10          # 0: only at the end
    keep_checkpoints: int = 3
    init_from: str = ""                 # params only: a run directory's checkpoint or an HF folder


class ExperimentError(ValueError):
    """An experiment that cannot run; `errors` lists every problem, each naming its file and key."""

    def __init__(self, errors: list[str] | str, key: str = ""):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.key = key  # the dotted key at fault, where there is one
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Experiment:
    name: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    advantages: AdvantageSection = field(default_factory=AdvantageSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    seed: int = 0

    def replace(self, **changes) -> "Experiment":
        """A copy with `changes`; a section is given whole or as a dict of the fields that change:
        `exp.replace(objective=dict(name="gspo"), seed=1)`. Unknown keys raise ExperimentError."""
        bad = _unknown_keys(changes)
        if bad:
            raise ExperimentError(bad[0][1], key=bad[0][0])
        updates = {}
        for key, value in changes.items():
            if key in SECTIONS and isinstance(value, dict):
                types_ = _fields(SECTIONS[key])
                value = dataclasses.replace(getattr(self, key), **{k: _coerce(v, types_[k]) for k, v in value.items()})
            elif key in SECTIONS and isinstance(value, SECTIONS[key]):  # whole: its lists become tuples too
                types_ = _fields(SECTIONS[key])
                value = dataclasses.replace(value, **{k: _coerce(getattr(value, k), t) for k, t in types_.items()})
            elif key not in SECTIONS:
                value = _coerce(value, _fields(Experiment)[key])
            updates[key] = value
        return dataclasses.replace(self, **updates)

    def get(self, key: str) -> Any:
        """The value at a dotted key, e.g. "rollout.group_size"."""
        value = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict:
        """JSON-ready: sections as objects, tuples as lists."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "<json>") -> "Experiment":
        """The inverse of to_dict. Missing keys take their defaults; unknown keys are errors."""
        if not isinstance(data, dict):
            raise ExperimentError(f"{source}: expected a JSON object, got {type(data).__name__}")
        bad = _unknown_keys(data)
        if bad:
            raise ExperimentError([f"{source}: {message}" for _, message in bad])
        return cls().replace(**data)

    @classmethod
    def from_file(cls, path: Path, source: str | None = None) -> "Experiment":
        """A saved config.json (`source` names it in errors; default: the path)."""
        source = source or str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExperimentError(f"{source}: unreadable ({e})") from None
        return cls.from_json(text, source)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "Experiment":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ExperimentError(f"{source}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        return cls.from_dict(data, source)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Experiment)
            if f.default_factory is not dataclasses.MISSING}


@functools.cache
def _fields(cls) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    return typing.get_type_hints(cls)


def _unknown_keys(changes: dict) -> list[tuple[str, str]]:
    """(key, message) for each key of `changes` (sections given as dicts) the schema does not have."""
    bad = []
    for key, value in changes.items():
        if key not in _fields(Experiment):
            bad.append((key, f"unknown key {key!r}{_did_you_mean(key, _fields(Experiment))}"))
        elif key in SECTIONS and isinstance(value, dict):
            bad += [(f"{key}.{name}", f"unknown key {key}.{name}"
                                      f"{_did_you_mean(name, _fields(SECTIONS[key]), key + '.')}")
                    for name in value if name not in _fields(SECTIONS[key])]
        elif key in SECTIONS and not isinstance(value, SECTIONS[key]):
            bad.append((key, f"{key}: expected a dict of its keys or a {SECTIONS[key].__name__}, got {value!r}"))
    return bad


def keys() -> list[str]:
    """Every settable dotted key: "name", "seed", "model.path", ..."""
    return [f"{k}.{name}" if k in SECTIONS else k for k in _fields(Experiment)
            for name in (_fields(SECTIONS[k]) if k in SECTIONS else [None])]


def _type_of(key: str):
    section, _, name = key.rpartition(".")
    return _fields(SECTIONS[section])[name] if section else _fields(Experiment)[key]


def _did_you_mean(word: str, candidates, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# ---- types: checking, coercion and parsing by a field's annotation ----------------------------
def _optional(tp) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, tp


def _type_name(tp) -> str:
    optional, inner = _optional(tp)
    if typing.get_origin(inner) is tuple:
        name = "list of str"
    else:
        name = "finite float" if inner is float else inner.__name__
    return f"{name} or None" if optional else name


def _coerce(value, tp):
    """Loss-free normalisation: lists to tuples (JSON), ints to floats for float fields."""
    _, inner = _optional(tp)
    if typing.get_origin(inner) is tuple and isinstance(value, list):
        return tuple(value)
    if inner is float and type(value) is int:
        return float(value)
    return value


def _has_type(value, tp) -> bool:
    optional, inner = _optional(tp)
    if value is None:
        return optional
    if typing.get_origin(inner) is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    if inner is float:  # finite: a NaN or infinite rate or limit is no setting (and no JSON)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if inner is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, inner)


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(text: str, tp):
    """A --set value read as the field's type; ValueError says what was expected."""
    optional, inner = _optional(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    if typing.get_origin(inner) is tuple:
        if text.strip().startswith("["):
            try:
                items = json.loads(text)
            except RecursionError:
                raise ValueError("a JSON list nested too deeply") from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("expected a JSON list of strings")
            return tuple(items)
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if inner is bool:
        if text.strip().lower() in TRUE:
            return True
        if text.strip().lower() in FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if inner in (int, float):
        try:
            return inner(text)
        except ValueError:
            raise ValueError(f"expected {_type_name(tp)}, got {text!r}") from None
    return text


# ---- where a key was set, for error messages --------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where an experiment came from: its file, then the experiment files it derives from, and the
    --set overrides applied on top (key -> the text given)."""
    files: tuple[Path, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()
    label: str = "<experiment>"

    @property
    def name(self) -> str:
        return _display(self.files[0]) if self.files else self.label

    def where(self, key: str) -> str:
        """"experiments/x.py:12" where the key is set, "--set key=value" for an override."""
        for k, text in reversed(self.overrides):  # the last --set of a key is the one applied
            if k == key:
                return f"{self.name} (--set {k}={text})"
        section, _, name = key.rpartition(".")
        for path in self.files:
            line = _find_assignment(path, section, name)
            if line:
                return f"{_display(path)}:{line}"
        return self.name


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _find_assignment(path: Path, section: str, name: str) -> int | None:
    """The line of `name=` in `path`; for a section's key, inside the file's `section=(...)` only."""
    # Only to point at a line: a byte that is not UTF-8 must not hide the message it points for.
    text = path.read_text(encoding="utf-8", errors="replace") if path.suffix == ".py" and path.is_file() else ""
    start, end = 0, len(text)
    if section:
        opened = re.search(rf"\b{section}\s*=\s*\w*\(", text)
        if not opened:
            return None
        start, depth = opened.end(), 1
        for end in range(start, len(text)):  # the section's closing parenthesis
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
    match = re.compile(rf"\b{name}\s*=(?!=)").search(text, start, end)
    return text.count("\n", 0, match.start()) + 1 if match else None


# ---- validation --------------------------------------------------------------------------------
def parse_context_stages(stages: tuple[str, ...]) -> list[tuple[int, int]]:
    """("STEP:TOKENS", ...) -> [(step, tokens)]; ValueError on a malformed entry."""
    out = []
    for stage in stages:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", stage)
        if not match:
            raise ValueError(f"expected 'STEP:TOKENS' entries, got {stage!r}")
        out.append((int(match[1]), int(match[2])))
    return out


def _mesh_sizes(mesh: MeshSection, devices: int) -> tuple[int, int, int] | None:
    sizes = [mesh.data, mesh.fsdp, mesh.tensor]
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if devices % known:
            return None
        sizes[sizes.index(-1)] = devices // known
    return tuple(sizes) if sizes[0] * sizes[1] * sizes[2] == devices else None


def validate(exp: Experiment, source: Source | str = "<experiment>", *, devices: int | None = None) -> None:
    """Raises ExperimentError listing every problem of `exp`. `devices`: also check the mesh against
    that many devices (the run passes jax.device_count())."""
    source = source if isinstance(source, Source) else Source(label=source)
    errors: list[str] = []

    def error(key: str, message: str) -> None:
        errors.append(f"{source.where(key)}: {key}: {message}")

    def check(key: str, ok: bool, message: str) -> None:
        if not ok:
            error(key, message)

    # Sections, then types: the range checks below assume them.
    for key, section in SECTIONS.items():
        if not isinstance(getattr(exp, key), section):
            value = getattr(exp, key)
            error(key, f"expected a {section.__name__}, got {type(value).__name__} {value!r} (a dict is "
                       f"accepted by Experiment.replace, not by the constructor)")
    if errors:
        raise ExperimentError(errors)
    for key in keys():
        tp, value = _type_of(key), exp.get(key)
        if not _has_type(value, tp):
            error(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if errors:
        raise ExperimentError(errors)

    m, o, a, d, r, s, b, opt, sch = (exp.model, exp.objective, exp.advantages, exp.data, exp.rollout,
                                     exp.sandbox, exp.batch, exp.optimizer, exp.schedule)
    check("name", bool(exp.name) and "/" not in exp.name and "\0" not in exp.name and exp.name not in (".", "..")
          and len(exp.name.encode("utf-8", "surrogatepass")) <= 255,
          f"a run needs a name usable as a folder name (at most 255 bytes, no '/'), got {exp.name!r}")
    check("seed", 0 <= exp.seed < 2**31, f"must be in [0, 2**31), got {exp.seed}")  # fits every seed argument

    check("model.path", bool(m.path), "empty: point it at a local Hugging Face folder (--set model.path=DIR)")
    for key, value, allowed in (("model.dtype", m.dtype, DTYPES), ("model.param_dtype", m.param_dtype, DTYPES),
                                ("model.remat", m.remat, REMAT_POLICIES),
                                ("model.attention", m.attention, ATTENTION_IMPLS)):
        check(key, value in allowed, f"{value!r} is not one of {allowed}{_did_you_mean(value, allowed)}")
    check("model.attention_block", m.attention_block >= 1, f"must be >= 1 (tokens per tile), got {m.attention_block}")
    check("model.max_context", m.max_context >= 0, f"must be >= 0 (0: the model's own length), got {m.max_context}")

    axes = {"mesh.data": exp.mesh.data, "mesh.fsdp": exp.mesh.fsdp, "mesh.tensor": exp.mesh.tensor}
    for key, size in axes.items():
        check(key, size >= 1 or size == -1, f"must be >= 1, or -1 for the remaining devices; got {size}")
    if list(axes.values()).count(-1) > 1:
        error([k for k, v in axes.items() if v == -1][-1], "at most one mesh axis may be -1 (the remaining devices)")
    elif devices is not None and all(v >= 1 or v == -1 for v in axes.values()):
        if _mesh_sizes(exp.mesh, devices) is None:
            key = next((k for k, v in axes.items() if v == -1), "mesh.fsdp")
            error(key, f"mesh data={exp.mesh.data} fsdp={exp.mesh.fsdp} tensor={exp.mesh.tensor} does not "
                       f"fit {devices} devices (the product must equal the device count; -1 takes the rest)")

    if o.name not in OBJECTIVES:
        error("objective.name", f"unknown objective {o.name!r}{_did_you_mean(o.name, OBJECTIVES)}; "
                                f"registered in rl.losses: {sorted(OBJECTIVES)}")
    else:
        options = OBJECTIVES[o.name].defaults
        for opt_name in ("eps_low", "eps_high"):
            value = getattr(o, opt_name)
            if value is not None and opt_name not in options:
                error(f"objective.{opt_name}", f"objective {o.name!r} has no option {opt_name}; "
                                               f"its options: {sorted(options) or 'none'}")
    for opt_name, hi in (("eps_low", 1.0), ("eps_high", None)):
        value = getattr(o, opt_name)
        check(f"objective.{opt_name}", value is None or (0 <= value and (hi is None or value < hi)),
              f"clip range must be in [0, {hi})" if hi else "clip range must be >= 0")
    modes = (*OVERLONG_MODES, "none")
    check("objective.overlong", o.overlong in modes,
          f"{o.overlong!r} is not one of {modes}{_did_you_mean(o.overlong, modes)}")
    check("objective.kl_coef", o.kl_coef >= 0, f"must be >= 0, got {o.kl_coef}")
    if o.tis_cap is not None:
        check("objective.tis_cap", o.tis_cap > 0, f"the cap C of min(ratio, C) must be > 0, got {o.tis_cap}")
        check("objective.tis_cap", r.logprobs,
              "truncated importance sampling needs the rollout logprobs, but rollout.logprobs is false")

    check("advantages.ddof", a.ddof in (0, 1), f"must be 0 (population std) or 1 (unbiased), got {a.ddof}")
    check("advantages.eps", a.eps >= 0, f"must be >= 0, got {a.eps}")

    for key in ("data.window", "data.eval_window"):
        value = exp.get(key)
        if value.strip():
            try:
                parse_window(value)
            except ValueError as e:
                error(key, str(e).split(": ", 1)[-1])
    check("data.train", all(p.strip() for p in d.train), "holds an empty path")
    check("data.eval", all(p.strip() for p in d.eval), "holds an empty path")
    check("data.prompt", d.prompt in STYLES, f"{d.prompt!r} is not one of {STYLES}{_did_you_mean(d.prompt, STYLES)}")
    check("data.max_prompt_tokens", d.max_prompt_tokens >= 1, f"must be >= 1, got {d.max_prompt_tokens}")

    check("rollout.group_size", r.group_size >= 2,
          f"must be >= 2: a group of one always has advantage 0; got {r.group_size}")
    check("rollout.temperature", r.temperature > 0,
          f"must be > 0: training samples from the policy (greedy has no logprobs to learn from); got {r.temperature}")
    check("rollout.top_p", 0 < r.top_p <= 1, f"must be in (0, 1], got {r.top_p}")
    check("rollout.max_response_tokens", r.max_response_tokens >= 1, f"must be >= 1, got {r.max_response_tokens}")
    try:
        stages = parse_context_stages(r.context_stages)
    except ValueError as e:
        error("rollout.context_stages", str(e))
    else:
        steps = [st for st, _ in stages]
        check("rollout.context_stages", steps == sorted(set(steps)), f"steps must increase, got {steps}")
        check("rollout.context_stages", all(t >= 1 for _, t in stages), "every stage needs >= 1 token")
    for url in r.servers:
        check("rollout.servers", re.match(r"https?://[^/\s]+", url) is not None,
              f"{url!r} is not an http(s):// URL")
    check("rollout.max_concurrency", r.max_concurrency >= 1, f"must be >= 1, got {r.max_concurrency}")
    check("rollout.max_staleness", r.max_staleness >= 0, f"must be >= 0, got {r.max_staleness}")
    check("rollout.max_refill_rounds", r.max_refill_rounds >= 0, f"must be >= 0, got {r.max_refill_rounds}")
    check("rollout.eval_temperature", r.eval_temperature >= 0, f"must be >= 0 (0: greedy), got {r.eval_temperature}")
    check("rollout.eval_top_p", 0 < r.eval_top_p <= 1, f"must be in (0, 1], got {r.eval_top_p}")
    check("rollout.eval_n", r.eval_n >= 1, f"must be >= 1, got {r.eval_n}")

    check("sandbox.time_limit", s.time_limit > 0, f"must be > 0 seconds, got {s.time_limit}")
    check("sandbox.memory_mb", s.memory_mb > 0, f"must be > 0, got {s.memory_mb}")
    check("sandbox.workers", s.workers >= 0, f"must be >= 0 (0: one per core), got {s.workers}")
    check("sandbox.reward", s.reward in SHAPES, f"{s.reward!r} is not one of {SHAPES}{_did_you_mean(s.reward, SHAPES)}")

    for key in ("batch.prompts_per_step", "batch.mini_batches", "batch.micro_batches"):
        check(key, exp.get(key) >= 1, f"must be >= 1, got {exp.get(key)}")
    check("batch.max_tokens_per_row", b.max_tokens_per_row >= 0, f"must be >= 0, got {b.max_tokens_per_row}")
    sequences, splits = b.prompts_per_step * r.group_size, b.mini_batches * b.micro_batches
    if min(b.prompts_per_step, r.group_size, splits) >= 1 and sequences % splits:
        error("batch.micro_batches",
              f"prompts_per_step * group_size = {b.prompts_per_step} * {r.group_size} = {sequences} rollouts per "
              f"step must divide into mini_batches * micro_batches = {b.mini_batches} * {b.micro_batches} = "
              f"{splits} equal parts")
    longest, response_key = _longest(exp)
    if b.max_tokens_per_row and b.max_tokens_per_row < longest:  # packed or not, a row holds a whole sequence
        error("batch.max_tokens_per_row",
              f"{b.max_tokens_per_row} tokens cannot hold the longest sequence, data.max_prompt_tokens + "
              f"{response_key} = {longest}")

    check("optimizer.lr", opt.lr > 0, f"must be > 0, got {opt.lr}")
    optimizer_steps = sch.steps * b.mini_batches  # warmup counts optimizer steps: mini_batches per RL step
    check("optimizer.warmup_steps", 0 <= opt.warmup_steps <= optimizer_steps,
          f"must be in [0, schedule.steps * batch.mini_batches = {optimizer_steps}] (optimizer steps), "
          f"got {opt.warmup_steps}")
    check("optimizer.weight_decay", opt.weight_decay >= 0, f"must be >= 0, got {opt.weight_decay}")
    check("optimizer.b1", 0 <= opt.b1 < 1, f"must be in [0, 1), got {opt.b1}")
    check("optimizer.b2", 0 <= opt.b2 < 1, f"must be in [0, 1), got {opt.b2}")
    check("optimizer.clip_norm", opt.clip_norm > 0, f"must be > 0, got {opt.clip_norm}")

    check("schedule.steps", sch.steps >= 1, f"must be >= 1, got {sch.steps}")
    check("schedule.eval_every", sch.eval_every >= 0,
          f"must be >= 0 (0: only before RL and at the end), got {sch.eval_every}")
    check("schedule.checkpoint_every", sch.checkpoint_every >= 0,
          f"must be >= 0 (0: only at the end), got {sch.checkpoint_every}")
    check("schedule.keep_checkpoints", sch.keep_checkpoints >= 1, f"must be >= 1, got {sch.keep_checkpoints}")
    if errors:
        raise ExperimentError(errors)


def _longest(exp: Experiment) -> tuple[int, str]:
    """The longest prompt + response a run can make, and the key that sets the response's length."""
    stages = [t for _, t in _stages_or_empty(exp.rollout)]
    key = "rollout.context_stages" if stages and max(stages) > exp.rollout.max_response_tokens else \
        "rollout.max_response_tokens"
    return exp.data.max_prompt_tokens + max([exp.rollout.max_response_tokens, *stages]), key


def _stages_or_empty(r: RolloutSection) -> list[tuple[int, int]]:
    try:
        return parse_context_stages(r.context_stages)
    except ValueError:
        return []


def check_resources(exp: Experiment, source: Source | str = "<experiment>", *, data_files: bool = True
                    ) -> ModelConfig:
    """Run-time checks of what the files on disk say: the model folder, the problem files (unless not
    `data_files`: only process 0 of a multi-host run reads them), the context length. Returns the
    resolved ModelConfig."""
    source = source if isinstance(source, Source) else Source(label=source)
    errors = []
    try:
        cfg = model_config(exp)
    except ExperimentError as e:
        raise ExperimentError(f"{source.where('model.path')}: {e}") from None
    if not exp.data.train:
        errors.append(f"{source.where('data.train')}: data.train: no training problem files")
    for key in ("data.train", "data.eval") if data_files else ():
        for path in exp.get(key):
            if not Path(path).exists():
                errors.append(f"{source.where(key)}: {key}: no such file {path!r}")
    if exp.schedule.init_from and not Path(exp.schedule.init_from).exists():
        errors.append(f"{source.where('schedule.init_from')}: schedule.init_from: no such checkpoint or "
                      f"folder {exp.schedule.init_from!r}")
    longest, key = _longest(exp)
    if longest > cfg.max_position_embeddings:
        errors.append(f"{source.where(key)}: {key}: data.max_prompt_tokens + {key} = {longest} exceeds the "
                      f"model's context of {cfg.max_position_embeddings} tokens (raise model.max_context for YaRN)")
    if errors:
        raise ExperimentError(errors)
    return cfg


def model_config(exp: Experiment) -> ModelConfig:
    """The ModelConfig of exp.model: config.json read from model.path with the runtime choices, and
    YaRN (factor max_context / native length) when model.max_context exceeds the native length."""
    m = exp.model
    try:
        cfg = ModelConfig.from_file(m.path, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                                    attention=m.attention, attention_block=m.attention_block)
    except ConfigError as e:
        raise ExperimentError(f"model.path: {e}") from None
    native = cfg.max_position_embeddings
    if m.max_context > native:
        if cfg.rope_scaling:
            raise ExperimentError(f"model.max_context: {m.path} already sets rope_scaling; "
                                  f"set max_context to 0 to use it as is")
        yarn = {"rope_type": "yarn", "factor": m.max_context / native, "original_max_position_embeddings": native}
        cfg = cfg.replace(rope_scaling=tuple(sorted(yarn.items())), max_position_embeddings=m.max_context)
    return cfg


def objective_options(exp: Experiment) -> dict:
    """The hyperparameters an experiment overrides, to pass to rl.losses.policy_loss."""
    return {k: getattr(exp.objective, k) for k in ("eps_low", "eps_high") if getattr(exp.objective, k) is not None}


# ---- --set overrides ---------------------------------------------------------------------------
def apply_overrides(exp: Experiment, assignments: list[str], source: Source | str = "<experiment>"
                    ) -> tuple[Experiment, Source]:
    """Applies "key.path=value" assignments, each value parsed as the field's type."""
    source = source if isinstance(source, Source) else Source(label=source)
    errors, done = [], list(source.overrides)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep:
            errors.append(f"--set {assignment}: expected key.path=value")
            continue
        if key in SECTIONS:
            errors.append(f"--set {assignment}: {key} is a section; set one of its keys: "
                          f"{', '.join(k for k in keys() if k.startswith(key + '.'))}")
            continue
        if key not in keys():
            errors.append(f"--set {assignment}: unknown key {key!r}{_did_you_mean(key, keys())}")
            continue
        section, _, name = key.rpartition(".")
        try:
            value = parse_value(text, _type_of(key))
        except (ValueError, json.JSONDecodeError) as e:
            errors.append(f"--set {assignment}: {key}: {e}")
            continue
        exp = exp.replace(**({section: {name: value}} if section else {key: value}))
        done.append((key, text))
    if errors:
        raise ExperimentError([f"{source.name}: {e}" for e in errors])
    return exp, dataclasses.replace(source, overrides=tuple(done))


# ---- loading -----------------------------------------------------------------------------------
def available() -> list[str]:
    """Bare names of the experiment files in experiments/."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_path(spec: str) -> Path:
    """A path to an experiment file (.py, or a saved config.json), or a bare name in experiments/."""
    path = Path(spec)
    if path.suffix and path.suffix not in (".py", ".json"):
        raise ExperimentError(f"{spec}: expected an experiment .py file, a saved config.json or a bare name "
                              f"from {_display(EXPERIMENTS_DIR)}")
    if path.is_file():
        return path
    if path.suffix or "/" in spec or path.exists():
        hint = f"; did you mean {path.stem!r}?" if (EXPERIMENTS_DIR / f"{path.stem}.py").is_file() else ""
        raise ExperimentError(f"{spec}: no such experiment file{hint}")
    candidate = EXPERIMENTS_DIR / f"{spec}.py"
    if candidate.is_file():
        return candidate
    raise ExperimentError(f"{spec}: no experiment of that name in {_display(EXPERIMENTS_DIR)}"
                          f"{_did_you_mean(spec, available())}; known: {', '.join(available())}")


def load(spec: str, overrides: list[str] = (), *, validated: bool = True) -> tuple[Experiment, Source]:
    """Loads an experiment by path or bare name, applies --set overrides and validates it (without
    the device count). Its name is the file's stem; a saved config.json keeps the name it holds."""
    path = resolve_path(spec)
    if path.suffix == ".json":
        exp = Experiment.from_file(path, _display(path))
        source = Source(files=(path,))
    else:
        module = _import_experiment(path)
        exp = getattr(module, "EXPERIMENT", None)
        if not isinstance(exp, Experiment):
            raise ExperimentError(f"{_display(path)}: defines no EXPERIMENT (an rl.experiment.Experiment), "
                                  f"found {type(exp).__name__}")
        exp = exp.replace(name=path.stem)
        source = Source(files=tuple(_experiment_files(module)))
    exp, source = apply_overrides(exp, list(overrides), source)
    if validated:
        validate(exp, source)
    return exp, source


def _experiments_package() -> None:
    """Makes `from experiments import base` work from any working directory."""
    if "experiments" not in sys.modules:
        spec = importlib.util.spec_from_file_location("experiments", EXPERIMENTS_DIR / "__init__.py",
                                                      submodule_search_locations=[str(EXPERIMENTS_DIR)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["experiments"] = module
        spec.loader.exec_module(module)


def _import_experiment(path: Path) -> types.ModuleType:
    _experiments_package()
    path = path.resolve()
    try:
        if path.parent == EXPERIMENTS_DIR:
            return importlib.import_module(f"experiments.{path.stem}")
        spec = importlib.util.spec_from_file_location(f"_experiment_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (Exception, SystemExit) as e:  # sys.exit() in the file would end the command silently
        raise ExperimentError(_import_error(path, e)) from None


def _import_error(path: Path, e: BaseException) -> str:
    """"file:line: Error: message" and the line's code, at the innermost frame in an experiment file."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if Path(f.filename).resolve() == path or Path(f.filename).resolve().parent == EXPERIMENTS_DIR]
    if isinstance(e, SyntaxError) and e.filename:
        where, code = f"{_display(Path(e.filename))}:{e.lineno}", (e.text or "").strip()
    elif frames:
        frame = frames[-1]
        section, _, name = getattr(e, "key", "").rpartition(".")
        # A bad key inside a multi-line replace(...) call: point at the key's own line.
        lineno = (name and _find_assignment(Path(frame.filename), section, name)) or frame.lineno
        where, code = f"{_display(Path(frame.filename))}:{lineno}", linecache.getline(frame.filename, lineno).strip()
    else:
        where, code = _display(path), ""
    message = (str(e) if isinstance(e, ExperimentError) else
               f"SyntaxError: {e.msg}" if isinstance(e, SyntaxError) else f"{type(e).__name__}: {e}")
    return f"{where}: {message}" + (f"\n    {code}" if code else "") + (
        f"\n  (while loading {_display(path)})" if not where.startswith(_display(path)) else "")


def _experiment_files(module: types.ModuleType) -> list[Path]:
    """The module's file, then the experiment files it derives from (depth first), each once."""
    seen: list[Path] = []

    def visit(mod):
        path = Path(mod.__file__).resolve()
        if path in seen:
            return
        seen.append(path)
        for value in vars(mod).values():
            if isinstance(value, types.ModuleType) and isinstance(getattr(value, "EXPERIMENT", None), Experiment):
                visit(value)

    visit(module)
    return seen
