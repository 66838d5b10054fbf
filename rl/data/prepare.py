"""The data section of an experiment, end to end: load, filter, render; one report for the run."""
from __future__ import annotations

from dataclasses import dataclass

from .filters import filter_problems
from .prompts import render_prompts
from .sources import ProblemRecord, load_problems

SPLITS = ("train", "eval")


@dataclass
class Prepared:
    prompts: list[tuple[ProblemRecord, list[int]]]  # (record, prompt token ids)
    report: dict  # {"split", "files", "load", "filter", "prompt_too_long", "prompts"}: for the run


def select(data, split: str = "train", *, exclude=(), strict: bool = False,
           progress: bool = False) -> tuple[list[ProblemRecord], dict]:
    """The problems of one split of `data` (an experiment's DataSection) that pass its filters,
    and the report so far. train: data.train, data.window, data.difficulties. eval: data.eval,
    data.eval_window, every difficulty (a held-out set is scored whole). Both de-duplicate when
    data.dedup; `exclude` (records, e.g. the eval set) drops training problems with their text."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    paths = list(data.train if split == "train" else data.eval)
    records, load_report = load_problems(paths, strict=strict, progress=progress)
    kept, filter_report = filter_problems(
        records, window=data.window if split == "train" else data.eval_window,
        difficulties=data.difficulties if split == "train" else (), dedup=data.dedup, exclude=exclude)
    return kept, {"split": split, "files": [str(p) for p in paths], "load": load_report.to_json(),
                  "filter": filter_report.to_json()}


def prepare(data, tokenizer, split: str = "train", *, exclude=(), strict: bool = False,
            progress: bool = False) -> Prepared:
    """select(), then prompts rendered in data.prompt style; those over data.max_prompt_tokens
    are dropped and counted."""
    kept, report = select(data, split, exclude=exclude, strict=strict, progress=progress)
    prompts, too_long = render_prompts(kept, tokenizer, data.prompt, data.max_prompt_tokens,
                                       progress=progress)
    return Prepared(prompts, {**report, "prompt_too_long": too_long, "prompts": len(prompts)})
