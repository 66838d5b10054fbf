"""The notebooks run headless on runs and evaluations made here, render their figures, and every notebook is
committed without outputs."""
import json
import os
import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("**/*.ipynb"))


def execute(name: str, monkeypatch, cwd=REPO, **env) -> list[dict]:
    """Run notebooks/NAME headless in `cwd` (raises on the first failing cell); returns every cell output."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    pythonpath = [str(REPO), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, pythonpath)))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


def figures(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def text(outputs) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     + str(o.get("data", {}).get("text/html", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     for o in outputs)


def test_objectives_notebook_runs(monkeypatch):
    assert figures(execute("objectives.ipynb", monkeypatch)) >= 3  # surrogate, gradient-weight, overlong plots


def write_run(run_dir, experiment, steps, *, with_staleness):
    """A run directory as the RL loop leaves it: the resolved experiment and one metrics row per step."""
    from rl.experiment import load
    from rl.metrics import RunLogger

    exp, _ = load(experiment)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(exp.to_json())
    logger = RunLogger(run_dir)
    logger.log(0, {"eval/pass@1": 0.1, "time/eval": 2.0})
    for step in range(1, steps + 1):
        row = {"reward/mean": -1 + step / steps, "reward/pass_rate": step / (2 * steps),
               "reward/format_failure_rate": 0.1, "length/mean": 20.0 + step, "length/max": 40,
               "length/truncated_frac": 0.05, "groups/kept": 4, "groups/rounds": 2, "groups/dropped_all_fail": 3,
               "loss/loss": 0.01, "loss/clip_frac_low": 0.01, "loss/clip_frac_high": 0.02, "loss/entropy": 1.5,
               "loss/approx_kl": 0.001 * step, "loss/mismatch_mean": 0.002, "loss/mismatch_max": 0.05,
               "optim/grad_norm": 0.5, "optim/lr": 1e-4, "time/generate": 3.0, "time/verify_wait": 0.1,
               "time/train": 1.5, "time/sync": 0.4, "time/step": 5.1, "weight_version": step}
        if with_staleness:
            row.update({"staleness/mean": 0.5, "staleness/max": 1})
        if step % 2 == 0:
            row["eval/pass@1"] = 0.1 + step / 50
        logger.log(step, row)
    logger.close()


def test_runs_notebook_plots_runs_side_by_side(tmp_path, monkeypatch):
    dapo, gspo = tmp_path / "dapo", tmp_path / "gspo"
    write_run(dapo, "tiny_dapo", 6, with_staleness=True)
    write_run(gspo, "tiny_gspo", 4, with_staleness=False)
    outputs = execute("runs.ipynb", monkeypatch, CODERL_RUN_DIRS=os.pathsep.join(map(str, (dapo, gspo))))
    assert figures(outputs) >= 2  # the training curves and the time split
    shown = text(outputs)
    assert "objective.name" in shown and "gspo" in shown  # the ablation, from the saved configs
    assert "name" in shown and "model.path" not in shown  # only what differs


def test_runs_notebook_opened_in_its_folder_finds_repository_paths_and_names_missing_ones(tmp_path, monkeypatch):
    """Jupyter runs a notebook in notebooks/: the default runs/... paths were looked up there, found empty,
    and left out without a word; a mistyped folder read as a run with no rows yet."""
    run = tmp_path / "dapo"
    write_run(run, "tiny_dapo", 2, with_staleness=False)
    relative = os.path.relpath(run, REPO)  # as runs/tiny_dapo is: relative to the repository
    outputs = execute("runs.ipynb", monkeypatch, cwd=REPO / "notebooks",
                      CODERL_RUN_DIRS=os.pathsep.join([relative, str(tmp_path / "missing")]))
    shown = text(outputs)
    assert "'dapo': '3 steps, last 2'" in shown and figures(outputs) >= 1
    assert f"{tmp_path / 'missing'}: no such directory, left out" in shown


def regraded(folder, out, solutions):
    """`folder`'s evaluation with the completions of some problems replaced by correct programs, graded for
    real: a second model that solves those problems, for comparisons with flips."""
    from rl import evaluation, passk
    from rl.data import load_problems
    from rl.reward import RewardSettings, score_sync
    from sandbox import SandboxPool

    results = evaluation.load_results(folder)
    records = {r.id: r for r in load_problems(results["meta"]["problems"])[0]}
    out.mkdir()
    lines, by_problem = [], {}
    with SandboxPool(1) as pool:
        for line in evaluation.read_samples(folder):
            if line["problem"] in solutions:
                text = f"```python\n{solutions[line['problem']]}\n```"
                grade = score_sync(pool, records[line["problem"]].problem, text, finish_reason="stop",
                                   settings=RewardSettings(time_limit=5.0))
                line = {**line, **grade.to_json(), "text": text, "finish_reason": "stop"}
            lines.append(line)
            by_problem.setdefault(line["problem"], []).append(line)
    (out / "samples.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    rows = [evaluation.problem_row(records[i], by_problem[i], results["ks"]) for i in by_problem]
    results.update(problems=rows, totals=evaluation.summarize(rows, results["ks"]),
                   by_difficulty=passk.breakdown(rows, "difficulty", results["ks"]))
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_evaluation_notebook_compares_evaluations(served, serve_model_dir, tmp_path, monkeypatch):
    from tests.rl.test_evaluate import PROBLEMS, evaluate_folder

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    base = evaluate_folder(served, serve_model_dir, problems, tmp_path / "base", seed=0)
    solved = regraded(base, tmp_path / "solved", {"echo": "print(input())", "double": "print(2 * int(input()))"})
    verdicts = [(line["problem"], line.get("verdict"), line.get("seconds"))
                for line in map(json.loads, (solved / "samples.jsonl").read_text().splitlines())]
    solved_counts = {r["id"]: r["c"] for r in json.loads((solved / "results.json").read_text())["problems"]}
    assert (solved_counts["echo"], solved_counts["double"]) == (2, 2), verdicts  # rows follow completion order
    outputs = execute("evaluation.ipynb", monkeypatch, CODERL_EVAL_DIRS=os.pathsep.join(map(str, (base, solved))))
    assert figures(outputs) >= 3  # pass@k curves, difficulty bars, compare intervals
    shown = text(outputs)
    assert "solved against base: 2 flipped" in shown and "print(2 * int(input()))" in shown
    assert "accepted" in shown.lower()
    (base / "samples.jsonl").unlink()  # results.json alone still compares; its completions cannot be shown
    shown = text(execute("evaluation.ipynb", monkeypatch, CODERL_EVAL_DIRS=os.pathsep.join(map(str, (base, solved)))))
    assert "solved against base: 2 flipped" in shown and f"(no samples.jsonl in {base})" in shown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index}"
