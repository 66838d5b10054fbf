"""Plans as markdown tables: one detailed table per plan, one summary row per plan."""
from __future__ import annotations

from rl.plan.search import Plan

GIB = 2**30


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def verdict(p: Plan) -> str:
    gap = p.peak - p.hbm
    if p.update.error and not p.update.temporaries:
        return f"does not fit ({p.update.error})"
    return f"fits, {_gib(-gap)} spare" if p.fits else f"does not fit by {_gib(gap)}"


def detail(p: Plan, mfu: float) -> str:
    """Everything about one compiled plan, per device unless stated."""
    u, s, t = p.update, p.shape, p.topology
    rows_dev = s.rows // (p.mesh["data"] * p.mesh["fsdp"])
    xla_total = u.flops * t.chips
    lines = [
        ("slice", t.label),
        ("mesh", ", ".join(f"{k}={v}" for k, v in p.mesh.items())),
        ("batch", f"{s.mini} mini x {s.micro} micro-batches of {s.rows} rows x {s.row_len:,} tokens "
                  f"({rows_dev} row(s) = {p.tokens_per_device:,} tokens per device per micro-batch), remat {p.remat}"),
        ("tokens per step", f"{s.token_slots:,} (every rollout at the full length)"),
        ("arguments", f"{_gib(u.arguments) if not u.error else '-'}: params {_gib(p.params)} + optimizer "
                      f"{_gib(p.optimizer)} + batch {_gib(p.batch)} (arithmetic)"),
        ("temporaries", _gib(u.temporaries) + (" (libtpu's out-of-memory message)" if u.error else "")),
        ("outputs (aliased to arguments)", f"{_gib(u.outputs)} ({_gib(u.aliased)})" if not u.error else "-"),
        ("peak", f"{_gib(p.peak)} of {_gib(p.hbm)} HBM: {verdict(p)}"),
        ("temporaries, arithmetic", _per_token(p)),
        ("FLOPs per step (arithmetic)", f"{p.flops.model:.3g} model, {p.flops.executed:.3g} executed (remat, "
                                        f"logprob head recompute)"),
        ("XLA cost_analysis flops", f"{xla_total:.3g} (counts each scan body once: not a step's FLOPs)"
                                    if not u.error else "-"),
        (f"step time at {mfu:.0%} MFU", f"{p.step_seconds(mfu):.1f} s ({s.token_slots / p.step_seconds(mfu):,.0f} "
                                        f"tokens/s)"),
        ("compile", f"{u.seconds:.0f} s" + (f"; logprob pass: {_gib(p.logprobs.temporaries)} temporaries"
                                             if p.logprobs else "")),
    ]
    head = f"### {p.experiment} on {t.cloud_name}\n\n| | |\n| --- | --- |\n"
    return head + "\n".join(f"| {k} | {v} |" for k, v in lines) + "\n"


def _per_token(p: Plan) -> str:
    return (f"{_gib(p.expected_temporaries)} = {_gib(p.fixed_temporaries)} fixed + {p.tokens_per_device:,} tokens x "
            f"{p.activation_per_token / 1024:.0f} KiB ({p.activation_per_token / p.layers / 1024:.1f} KiB per layer): "
            f"compiled / arithmetic = {p.update.temporaries / p.expected_temporaries:.2f}")


SUMMARY_HEAD = ("| experiment | slice | micro-batches x rows/device | remat | params + optimizer | temporaries | "
                "peak / HBM | verdict | temporaries compiled / arithmetic | model FLOPs | step @ MFU | tokens/step |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")


def summary_row(p: Plan, mfu: float) -> str:
    u = p.update
    rows_dev = p.shape.rows // (p.mesh["data"] * p.mesh["fsdp"])
    ratio = f"{u.temporaries / p.expected_temporaries:.2f}"
    return (f"| {p.experiment} | {p.topology.cloud_name} | {p.micro_batches} x {rows_dev} | {p.remat} | "
            f"{_gib(p.params + p.optimizer)} | {_gib(u.temporaries)} | "
            f"{_gib(p.peak)} / {_gib(p.hbm)} | {verdict(p)} | {ratio} | {p.flops.model:.3g} | "
            f"{p.step_seconds(mfu):.0f} s | {p.shape.token_slots:,} |\n")
