"""Held-out evaluation as LiveCodeBench scores it: n completions per problem, each graded the moment it
arrives, unbiased pass@k per problem and its mean, broken down by difficulty and platform.

`evaluate` is what `python -m rl.evaluate` and the RL loop's periodic held-out eval both call. With an
out_dir it keeps everything on disk as it goes:
- samples.jsonl: one line per completion (problem id, seed, prompt and output token ids, text, verdict,
  per-test results, finish reason, length), appended the moment the completion is graded;
- results.json: settings, meta (model, window, ...), totals, breakdowns and one row per problem.
Re-running on the same folder skips the problems whose n samples are all in samples.jsonl; a problem
cut off half way is redrawn whole (its seeds are fixed by the problem id, so the redraw asks for the
same samples). `compare` says whether two results differ by more than chance.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from rl import passk
from rl.groups import sample_and_grade
from rl.reward import RewardSettings
from rl.rollout.records import sample_seed

SAMPLES_FILE, RESULTS_FILE = "samples.jsonl", "results.json"
FORMAT = 1
# What a sample line keeps of its grade for the per-problem rows (the rest stays in samples.jsonl).
_SUMMARY = {"passed": bool, "verdict": str, "length": int, "truncated": bool, "format_error": bool}  # and types


class EvaluationError(ValueError):
    """An evaluation that cannot run or be read; the message names the folder, file or setting."""


def problem_seed(seed: int, problem_id: str, index: int) -> int:
    """The sampling_seed of sample `index` of a problem: fixed by the problem's id, not its position, so a
    resumed or re-filtered evaluation asks for the same samples."""
    return sample_seed(zlib.crc32(f"{seed}/{problem_id}".encode()), index)


async def evaluate(client, pool, tokenizer, prompts: Sequence[tuple], *, n: int, ks: Sequence[int],
                   sampling: Mapping, settings: RewardSettings, seed: int = 0, out_dir=None,
                   progress: bool = True, context_length: int | None = None, meta: Mapping | None = None) -> dict:
    """n completions of each (record, prompt_ids) in `prompts`, drawn from `client` (a RolloutClient) and
    graded on `pool` (a SandboxPool) as they arrive; returns the results (what results.json holds).

    sampling: SGLang sampling params (temperature, top_p, max_new_tokens, stop_token_ids).
    context_length: when given, each problem's max_new_tokens is capped at the room its prompt leaves.
    meta: JSON facts recorded with the results (model, window, ...); with `sampling`, n, seed, `settings`
    and the pool's grading options they must match the folder's on a resume.
    """
    ks = sorted({int(k) for k in ks})
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise EvaluationError(f"pass@k needs 1 <= k <= n: got n={n}, k={ks} (raise n or lower k)")
    if not prompts:
        raise EvaluationError("no problems to evaluate (check the files, the window and the filters)")
    ids = [rec.id for rec, _ in prompts]
    _refuse_repeats(ids, "")
    setup = {"n": n, "seed": seed, "sampling": dict(sampling), "context_length": context_length,
             "reward": dataclasses.asdict(settings), "sandbox": sandbox_mode(pool), "meta": dict(meta or {})}
    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, list[dict]] = {}
    if out is not None:
        done = _resume(out, setup, set(ids), n)
        _write_results(out, _results(setup, ks, prompts, done, status="running", resumed=len(done)))
    todo = [(p, rec, prompt) for p, (rec, prompt) in enumerate(prompts) if rec.id not in done]
    resumed = len(done)
    lines = (out / SAMPLES_FILE).open("a", encoding="utf-8") if out is not None else None
    bar = tqdm(total=len(todo) * n, desc="evaluating", unit=" samples", disable=not progress, dynamic_ncols=True)
    partial: dict[str, list[dict]] = {}
    passed = total = 0

    async def one(p: int, rec, prompt_ids, index: int):
        params = dict(sampling)
        if context_length:
            params["max_new_tokens"] = min(params.get("max_new_tokens", context_length), context_length - len(prompt_ids))
        return rec, await sample_and_grade(client, pool, tokenizer, p, rec, prompt_ids, key=f"eval/{rec.id}",
                                           index=index, sampling=params, seed=problem_seed(seed, rec.id, index),
                                           settings=settings)

    # Problem-major order: the client's slots are granted first come, first served, so problems finish
    # one after another and a resume loses little.
    tasks = [asyncio.ensure_future(one(p, rec, prompt, i)) for p, rec, prompt in todo for i in range(n)]
    try:
        for next_done in asyncio.as_completed(tasks):
            rec, rollout = await next_done
            line = sample_line(rec.id, rollout)
            if lines is not None:
                lines.write(json.dumps(line) + "\n")
                lines.flush()
            group = partial.setdefault(rec.id, [])
            group.append({k: line[k] for k in _SUMMARY})
            if len(group) == n:
                done[rec.id] = partial.pop(rec.id)
            passed, total = passed + line["passed"], total + 1
            bar.update()
            bar.set_postfix_str(f"pass@1 {passed / total:.3f}", refresh=False)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        if lines is not None:
            lines.close()
    results = _results(setup, ks, prompts, done, status="complete", resumed=resumed)
    results["seconds"] = round(time.perf_counter() - start, 3)
    if out is not None:
        _write_results(out, results)
    return results


def sample_line(problem_id: str, rollout) -> dict:
    """One samples.jsonl line: a graded completion (rl.groups.Rollout) with its problem's id."""
    s, grade = rollout.sample, rollout.score.to_json()
    return {"problem": problem_id, "index": s.index, "seed": s.seed, **grade,
            "finish_reason": s.finish_reason, "length": len(s.output_ids), "weight_version": s.weight_version,
            "text": rollout.text, "prompt_ids": list(s.prompt_ids), "output_ids": list(s.output_ids)}


def sandbox_mode(pool) -> dict:
    """The pool's grading options (comparison rule, limits): two results graded differently are flagged."""
    defaults = getattr(pool, "defaults", None)
    return dataclasses.asdict(defaults) if dataclasses.is_dataclass(defaults) else {}


# ---- results ----------------------------------------------------------------------------------------

def problem_row(rec, samples: Sequence[Mapping], ks: Sequence[int]) -> dict:
    """One problem's n, c, pass@k and what its completions did, from its sample summaries."""
    n, c = len(samples), sum(bool(s["passed"]) for s in samples)
    return {"id": rec.id, "n": n, "c": c, **{f"pass@{k}": passk.pass_at_k(n, c, k) for k in ks if k <= n},
            "difficulty": rec.difficulty, "platform": rec.platform, "source": rec.source,
            "contest_date": rec.contest_date.isoformat() if rec.contest_date else None,
            "verdicts": dict(Counter(s["verdict"] for s in samples)),
            "mean_length": sum(s["length"] for s in samples) / n,
            "truncated": sum(bool(s["truncated"]) for s in samples),
            "format_errors": sum(bool(s["format_error"]) for s in samples)}


def summarize(rows: Sequence[Mapping], ks: Sequence[int]) -> dict:
    """Totals over problem rows: mean pass@k, and sample-level rates."""
    samples = sum(r["n"] for r in rows)
    verdicts = Counter()
    for r in rows:
        verdicts.update(r["verdicts"])
    totals = {"problems": len(rows), "samples": samples,
              **{f"pass@{k}": v for k, v in passk.mean_pass_at_k([(r["n"], r["c"]) for r in rows], ks).items()}}
    if samples:
        totals.update({"format_error_rate": sum(r["format_errors"] for r in rows) / samples,
                       "truncated_frac": sum(r["truncated"] for r in rows) / samples,
                       "mean_length": sum(r["mean_length"] * r["n"] for r in rows) / samples,
                       "verdicts": dict(verdicts.most_common())})
    return totals


def _results(setup: dict, ks, prompts, done: Mapping[str, list], *, status: str, resumed: int) -> dict:
    rows = [problem_row(rec, done[rec.id], ks) for rec, _ in prompts if rec.id in done]
    return {"format": FORMAT, "status": status, "ks": list(ks), **setup,
            "problems_total": len(prompts), "resumed_problems": resumed,
            "totals": summarize(rows, ks),
            "by_difficulty": passk.breakdown(rows, "difficulty", ks),
            "by_platform": passk.breakdown(rows, "platform", ks), "problems": rows}


def _write_results(out: Path, results: dict) -> None:
    tmp = out / f".{RESULTS_FILE}.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out / RESULTS_FILE)  # never a half-written results.json


def metrics(results: Mapping, prefix: str = "eval/") -> dict:
    """The scalars a training run logs from an evaluation: pass@k and the sample-level rates."""
    keep = ("format_error_rate", "truncated_frac", "mean_length")
    return {f"{prefix}{k}": v for k, v in results["totals"].items() if k.startswith("pass@") or k in keep}


# ---- resume -----------------------------------------------------------------------------------------

_RESUME_KEYS = ("n", "seed", "sampling", "context_length", "reward", "sandbox", "meta")


def _resume(out: Path, setup: dict, ids: set[str], n: int) -> dict[str, list[dict]]:
    """The finished problems' sample summaries in `out`, after cutting samples.jsonl back to them. Refuses
    a folder made with other settings: its samples would not be those asked for."""
    out.mkdir(parents=True, exist_ok=True)
    results_path, samples_path = out / RESULTS_FILE, out / SAMPLES_FILE
    if not results_path.exists():
        if samples_path.exists() and samples_path.stat().st_size:
            raise EvaluationError(f"{samples_path}: exists without {RESULTS_FILE}, so its settings are unknown; "
                                  "move it away or use another out folder")
        samples_path.write_text("")
        return {}
    try:
        old = json.loads(results_path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise EvaluationError(f"{results_path}: unreadable ({e}); move it away or use another out folder") from None
    if not isinstance(old, dict):
        raise EvaluationError(f"{results_path}: not an rl.evaluate results file (expected a JSON object); "
                              "move it away or use another out folder")
    # Through JSON, so tuples and lists compare equal.
    asked = json.loads(json.dumps({k: setup[k] for k in _RESUME_KEYS}))
    differ = [k for k in _RESUME_KEYS if old.get(k) != asked[k]]
    if differ:
        what = "; ".join(f"{k}: folder {json.dumps(old.get(k))} vs now {json.dumps(asked[k])}" for k in differ)
        raise EvaluationError(f"{out}: made with other settings ({what}); use another out folder to evaluate "
                              "with these")
    groups: dict[str, dict[int, tuple[str, dict]]] = {}  # problem -> index -> (the line as written, parsed)
    if samples_path.exists():
        for raw in samples_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(raw)
                key, index = line["problem"], line["index"]
                if not all(type(line[k]) is t for k, t in _SUMMARY.items()):  # type(): a bool is no length
                    continue
            except (ValueError, RecursionError, TypeError, KeyError):
                continue  # a line cut short by a crash: its problem is redone
            if isinstance(key, str) and key in ids and isinstance(index, int) and 0 <= index < n:
                groups.setdefault(key, {})[index] = raw, line
    finished = {k: g for k, g in groups.items() if len(g) == n}
    tmp = out / f".{SAMPLES_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for g in finished.values():
            f.writelines(g[i][0] + "\n" for i in range(n))
    os.replace(tmp, samples_path)
    return {k: [{s: line[s] for s in _SUMMARY} for _, line in g.values()] for k, g in finished.items()}


# ---- reading results --------------------------------------------------------------------------------

def load_results(path) -> dict:
    """results.json of an evaluation folder (or the file itself); EvaluationError names what is wrong."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except FileNotFoundError:
        raise EvaluationError(f"{file}: not found (is {path} an rl.evaluate --out folder?)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise EvaluationError(f"{file}: unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(results, dict) or not isinstance(results.get("problems"), list):
        raise EvaluationError(f"{file}: not an rl.evaluate results file (no 'problems' list)")
    for i, row in enumerate(results["problems"]):
        if not (isinstance(row, dict) and isinstance(row.get("id"), str) and type(row.get("n")) is int
                and type(row.get("c")) is int and 0 <= row["c"] <= row["n"] and row["n"] >= 1):
            raise EvaluationError(f"{file}: problems[{i}]: expected an object with id, n >= 1 and 0 <= c <= n")
    _refuse_repeats([row["id"] for row in results["problems"]], f"{file}: ")  # pairs need one row per problem
    results["path"] = str(file.parent)
    return results


def _refuse_repeats(ids: list[str], where: str) -> None:
    if len(set(ids)) != len(ids):
        raise EvaluationError(f"{where}problem ids repeat: {sorted(i for i, c in Counter(ids).items() if c > 1)[:5]}")


def read_samples(folder, problems: set[str] | None = None) -> list[dict]:
    """The samples.jsonl lines of an evaluation folder (of `problems` only, when given)."""
    rows = []
    with (Path(folder) / SAMPLES_FILE).open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if not (isinstance(line, dict) and isinstance(line.get("problem"), str)
                    and isinstance(line.get("index"), int)):
                continue  # not a sample line: skipped like a line cut short
            if problems is None or line["problem"] in problems:
                rows.append(line)
    return rows


# ---- comparing two evaluations ----------------------------------------------------------------------

def verdicts_changed(folder_a, folder_b, problems: set[str]) -> dict:
    """Over the completions both evaluations drew identically (same problem, index and tokens), how
    many got another verdict: what a grading mode (e.g. lcb_exact) changes, with sampling held fixed."""
    try:
        by_key = {(s["problem"], s["index"]): s for s in read_samples(folder_a, problems)}
        same = changed = 0
        for s in read_samples(folder_b, problems):
            other = by_key.get((s["problem"], s["index"]))
            if other is not None and other.get("output_ids") == s.get("output_ids"):
                same += 1
                changed += other["verdict"] != s["verdict"]
    except (OSError, KeyError):  # samples.jsonl missing or from another version: nothing to pair
        return {"same_completions": 0, "changed": 0}
    return {"same_completions": same, "changed": changed}


def compare(a: Mapping, b: Mapping, *, common: bool = False, resamples: int = 10_000, seed: int = 0) -> dict:
    """How b differs from a (two results as load_results reads them), paired over problems.

    pass@1 difference b - a with a paired bootstrap 95% interval, a sign test on the per-problem pass rates,
    and the problems that flipped (solved at least once by one side, never by the other). Results over
    different problem sets are refused unless `common`, which compares the shared problems and says so.
    Differences in grading (the sandbox options, limits) and in sampling are listed in `notes`."""
    rows_a = {r["id"]: r for r in a["problems"]}
    rows_b = {r["id"]: r for r in b["problems"]}
    shared = [i for i in rows_a if i in rows_b]
    only_a, only_b = sorted(set(rows_a) - set(rows_b)), sorted(set(rows_b) - set(rows_a))
    if (only_a or only_b) and not common:
        raise EvaluationError(
            f"the results cover different problems: {len(shared)} shared, {len(only_a)} only in A "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]}); compare the shared ones with "
            "--common")
    if not shared:
        raise EvaluationError("the results share no problem")
    rate_a = [rows_a[i]["c"] / rows_a[i]["n"] for i in shared]
    rate_b = [rows_b[i]["c"] / rows_b[i]["n"] for i in shared]
    diff, low, high = passk.paired_bootstrap(rate_a, rate_b, resamples=resamples, seed=seed)
    flipped = [{"id": i, "a": f"{rows_a[i]['c']}/{rows_a[i]['n']}", "b": f"{rows_b[i]['c']}/{rows_b[i]['n']}",
                "gained": rows_b[i]["c"] > 0}
               for i in shared if (rows_a[i]["c"] > 0) != (rows_b[i]["c"] > 0)]
    notes = []
    for key, what in (("sandbox", "graded in different sandbox modes"), ("reward", "graded with other limits"),
                      ("sampling", "sampled differently"), ("n", "with different samples per problem")):
        if a.get(key) != b.get(key):
            notes.append(f"{what}: A {json.dumps(a.get(key))} vs B {json.dumps(b.get(key))}")
    for name, r in (("A", a), ("B", b)):
        if r.get("status") != "complete":
            notes.append(f"{name} is not complete (status {r.get('status')!r}): resume it first")
    regraded = None
    if a.get("sandbox") != b.get("sandbox"):
        regraded = verdicts_changed(a["path"], b["path"], set(shared))
        if regraded["same_completions"]:
            notes.append(f"the grading mode changed {regraded['changed']} of {regraded['same_completions']} "
                         "verdicts on identical completions")
    return {"regraded": regraded, "a": a.get("path"), "b": b.get("path"), "problems": len(shared), "only_a": only_a, "only_b": only_b,
            "pass@1_a": sum(rate_a) / len(shared), "pass@1_b": sum(rate_b) / len(shared),
            "diff": diff, "ci95": [low, high], "sign_test": passk.sign_test(rate_a, rate_b),
            "flipped": flipped, "notes": notes}
