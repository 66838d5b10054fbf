"""What a run shows and keeps: metrics.jsonl (one object per step), TensorBoard events, the console.

On resume the log is cut back to the restored step, so a killed and resumed run has the same
metrics.jsonl as one that never stopped.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
# The console line: (metric, label, format).
HEADLINE = (("reward/mean", "reward", "+.3f"), ("reward/pass_rate", "pass", ".2f"),
            ("eval/pass@1", "eval@1", ".3f"), ("loss/loss", "loss", "+.4f"),
            ("length/mean", "len", ".0f"), ("time/step", "s", ".1f"))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every well-formed row of a run's metrics.jsonl: an object with an integer step (a line cut short by
    a crash, or edited into something else, is left out)."""
    return _read(Path(run_dir) / METRICS_FILE)[0]


def _read(path: Path) -> tuple[list[dict], int]:
    """(well-formed rows, count of other non-blank lines) of a metrics file."""
    rows, bad = [], 0
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line)  # bytes: a line that is not UTF-8 is a bad line, not a changed one
            except (ValueError, RecursionError):
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
                rows.append(row)
            else:
                bad += bool(line.strip())
    return rows, bad


class RunLogger:
    """Appends one JSON object per step and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        rows, bad = _read(self.path)
        if bad:  # the file is rewritten below: what it held is kept as it was
            keep = self.path.with_name(f"{METRICS_FILE}.{int(time.time())}.bak")
            shutil.copyfile(self.path, keep)
            print(f"warning: {self.path}: {bad} line(s) are not metrics rows and are left out; the file as it "
                  f"was is kept in {keep}", file=sys.stderr)
        kept = [r for r in rows if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step + 1)
        self.history = kept

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in sorted(metrics.items())})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("step", "time") and math.isfinite(v):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()
        self.history.append(row)
        return row

    def close(self) -> None:
        self.tb.close()


def headline(row: dict) -> str:
    """The one-line step summary."""
    parts = [f"step {row['step']:>4}"]
    for key, label, fmt in HEADLINE:
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{label} {row[key]:{fmt}}")
    return " | ".join(parts)


def _plain(v):
    """JSON-safe scalars (numpy / jax scalars become Python numbers; NaN becomes null)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
