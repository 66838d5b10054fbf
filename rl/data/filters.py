"""Which loaded problems a run uses: a contest-date window, difficulties, and no duplicate texts.
Each filter reports what it dropped and why, for the run's record."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from .sources import ProblemRecord

# LiveCodeBench's release windows (its leaderboard's v5 and v6 problem sets).
WINDOWS = {"lcb_v5": "2024-08-01:2025-02-01", "lcb_v6": "2024-08-01:2025-05-01"}


@dataclass
class FilterReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    dropped_ids: dict[str, list[str]] = field(default_factory=dict)  # reason -> ids

    def drop(self, reason: str, rec: ProblemRecord) -> None:
        self.dropped[reason] += 1
        self.dropped_ids.setdefault(reason, []).append(rec.id)

    def to_json(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped)}


def parse_window(spec: str) -> tuple[datetime | None, datetime | None]:
    """"START:END" (ISO dates, either side may be empty) or a name in WINDOWS -> (start, end).

    Both ends are inclusive, compared as LiveCodeBench does (`start <= contest_date <= end`, the
    dates parsed as midnight): "2024-08-01:2025-02-01" keeps contests from 1 Aug 2024 through
    1 Feb 2025."""
    text = WINDOWS.get(spec.strip(), spec.strip())
    if text.count(":") != 1:
        raise ValueError(f"data.window: expected 'YYYY-MM-DD:YYYY-MM-DD' (either side may be empty) "
                         f"or one of {sorted(WINDOWS)}, got {spec!r}")
    bounds = []
    for part in text.split(":"):
        try:
            bounds.append(datetime.strptime(part.strip(), "%Y-%m-%d") if part.strip() else None)
        except ValueError:
            raise ValueError(f"data.window: {part!r} is not a YYYY-MM-DD date (in {spec!r})") from None
    start, end = bounds
    if start and end and start > end:
        raise ValueError(f"data.window: starts after it ends: {spec!r}")
    return start, end


def normalized_text(question: str) -> str:
    """The text duplicates share: Unicode NFKC, case-folded, whitespace runs made one space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", question)).strip().casefold()


def filter_problems(records: list[ProblemRecord], *, window: str = "", difficulties=(),
                    dedup: bool = True, exclude=()) -> tuple[list[ProblemRecord], FilterReport]:
    """Keep records inside `window` ("" = all), of one of `difficulties` (empty = all, compared
    in lower case), whose text is not that of a record in `exclude` (held-out problems), and,
    with `dedup`, the first of each normalized question text. Reasons, checked in this order:
    "no_contest_date" and "outside_window", "difficulty", "held_out", "duplicate_text"."""
    start, end = parse_window(window) if window.strip() else (None, None)
    wanted = {d.strip().lower() for d in difficulties if d.strip()}
    held_out = {normalized_text(r.question) for r in exclude}
    report, kept, texts = FilterReport(), [], set()
    for rec in records:
        if start or end:
            if rec.contest_date is None:
                report.drop("no_contest_date", rec)
                continue
            if (start and rec.contest_date < start) or (end and rec.contest_date > end):
                report.drop("outside_window", rec)
                continue
        if wanted and rec.difficulty not in wanted:
            report.drop("difficulty", rec)
            continue
        key = normalized_text(rec.question)
        if key in held_out:
            report.drop("held_out", rec)
            continue
        if dedup:
            if key in texts:
                report.drop("duplicate_text", rec)
                continue
            texts.add(key)
        kept.append(rec)
    report.kept = len(kept)
    return kept, report
