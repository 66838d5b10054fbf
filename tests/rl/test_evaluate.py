"""rl.evaluate end to end on a tiny random model over the embedded server (real HTTP, real sandbox).

The model is random, so these check structure, counts and consistency with samples.jsonl, not accuracy.
"""
import asyncio
import json

import pytest

from rl import evaluation, passk
from rl.evaluate import main, yarn_view
from rl.reward import RewardSettings
from rl.rollout.client import RolloutClient
from tests.rl.serve_helpers import API_KEY

PROBLEMS = [
    {"id": "echo", "question": "Read a line and print it unchanged.", "difficulty": "easy", "platform": "atcoder",
     "contest_date": "2024-09-01T00:00:00", "tests": [{"input": "hi\n", "output": "hi\n"}]},
    {"id": "double", "question": "Read n and print 2n.", "difficulty": "medium", "platform": "codeforces",
     "contest_date": "2024-12-24T00:00:00", "tests": [{"input": "3\n", "output": "6\n"}]},
    {"id": "square", "question": "Complete square(x) to return x * x.", "starter_code": "def square(x):\n    ",
     "fn_name": "square", "difficulty": "hard", "platform": "leetcode", "contest_date": "2024-10-05T00:00:00",
     "tests": [{"input": "3", "output": "9"}]},
    {"id": "old", "question": "Print 1.", "difficulty": "easy", "platform": "atcoder",
     "contest_date": "2023-01-07T00:00:00", "tests": [{"input": "", "output": "1\n"}]},
]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def check_consistent(out, n, ks):
    """results.json agrees with samples.jsonl: n lines per problem, c = lines passed, pass@k from (n, c)."""
    results = evaluation.load_results(out)
    lines = evaluation.read_samples(out)
    by_problem = {}
    for line in lines:
        by_problem.setdefault(line["problem"], []).append(line)
    assert sorted(by_problem) == sorted(r["id"] for r in results["problems"])
    for row in results["problems"]:
        group = by_problem[row["id"]]
        assert sorted(s["index"] for s in group) == list(range(n)) and row["n"] == n
        assert row["c"] == sum(s["passed"] for s in group)
        for k in ks:
            assert row[f"pass@{k}"] == pytest.approx(passk.pass_at_k(n, row["c"], k))
        for s in group:
            assert s["length"] == len(s["output_ids"]) > 0 and s["prompt_ids"] and s["verdict"]
            assert s["finish_reason"] in ("stop", "length") and isinstance(s["text"], str)
            assert s["truncated"] == (s["finish_reason"] == "length")
    totals = results["totals"]
    assert totals["samples"] == len(lines) == n * len(results["problems"])
    for k in ks:
        assert totals[f"pass@{k}"] == pytest.approx(
            sum(r[f"pass@{k}"] for r in results["problems"]) / len(results["problems"]))
    return results, by_problem


def test_cli_evaluates_the_window_and_difficulties(served, serve_model_dir, problems_file, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["--server", served.url, "--api-key", API_KEY, "--tokenizer", str(serve_model_dir),
                 "--problems", str(problems_file), "--window", "2024-08-01:2025-02-01", "--difficulty", "easy",
                 "medium", "--n", "3", "--k", "1,2", "--max-new-tokens", "12", "--workers", "1", "--out", str(out),
                 "--lcb-exact", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results, _ = check_consistent(out, 3, [1, 2])
    # "old" is outside the window, "square" is hard: both filtered out, and the filter report says so.
    assert sorted(r["id"] for r in results["problems"]) == ["double", "echo"]
    assert results["meta"]["data"]["filter"]["dropped"] == {"outside_window": 1, "difficulty": 1}
    assert results["status"] == "complete" and results["sampling"]["max_new_tokens"] == 12
    assert results["context_length"] == 4096 and results["meta"]["model"] == "tiny"  # what /v1/models reports
    assert results["sandbox"]["lcb_exact"] is True and results["reward"]["time_limit"] == 15.0
    assert set(results["by_difficulty"]) == {"easy", "medium"}
    assert set(results["by_platform"]) == {"atcoder", "codeforces"}
    assert "pass@2" in printed.out and "difficulty=medium" in printed.out
    # Past the served context: refused, with the command that serves it.
    assert main(["--server", served.url, "--api-key", API_KEY, "--tokenizer", str(serve_model_dir),
                 "--problems", str(problems_file), "--max-context", "8192", "--no-progress", "--n", "1",
                 "--k", "1"]) == 2
    assert "--context-length 8192" in capsys.readouterr().err


def test_max_context_past_the_native_length_loads_the_model_with_yarn(tiny_model_dir, tmp_path):
    from models.config import ModelConfig

    view, override = yarn_view(tiny_model_dir, 8192, tmp_path / "view")
    cfg = ModelConfig.from_file(view / "config.json")
    assert override["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}
    assert cfg.max_position_embeddings == 8192 and dict(cfg.rope_scaling)["factor"] == 2.0
    weights = sorted(tiny_model_dir.glob("*.safetensors"))
    assert weights and all((view / w.name).resolve() == w.resolve() for w in weights)
    assert json.loads((tiny_model_dir / "config.json").read_text()).get("rope_scaling") is None  # untouched
    assert yarn_view(tiny_model_dir, 4096, tmp_path / "same") == (tiny_model_dir, None)


def evaluate_folder(served, tokenizer_dir, problems_file, out, *, seed, n=2):
    """A real evaluation of the served tiny model, written to `out` through the CLI."""
    assert main(["--server", served.url, "--api-key", API_KEY, "--tokenizer", str(tokenizer_dir), "--problems",
                 str(problems_file), "--n", str(n), "--k", "1,2", "--max-new-tokens", "8", "--workers", "1",
                 "--seed", str(seed), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def pool():
    from sandbox import SandboxPool

    with SandboxPool(1) as p:
        yield p


async def _evaluate(url, pool, tokenizer, prompts, out, *, n, counter=None, seed=0):
    class CountingClient(RolloutClient):
        """The real client, counting the samples it is asked for."""
        async def draw(self, request):
            if counter is not None:
                counter.append(request.identity)
            return await super().draw(request)

    async with CountingClient([url], api_key=API_KEY) as client:
        return await evaluation.evaluate(
            client, pool, tokenizer, prompts, n=n, ks=[1], sampling={"max_new_tokens": 8, "temperature": 1.0},
            settings=RewardSettings(time_limit=5.0), seed=seed, out_dir=out, progress=False, meta={"model": "tiny"})


@pytest.fixture(scope="module")
def prompts(serve_model_dir, problems_file):
    from rl import data

    tokenizer = data.load_tokenizer(serve_model_dir)
    records, _ = data.load_problems([problems_file])
    return tokenizer, data.render_prompts(records, tokenizer)[0]


def test_resume_skips_finished_problems_and_redoes_partial_ones(served, pool, prompts, tmp_path):
    tokenizer, rendered = prompts
    out = tmp_path / "eval"
    drawn = []
    asyncio.run(_evaluate(served.url, pool, tokenizer, rendered, out, n=2, counter=drawn))
    assert len(drawn) == 2 * len(rendered)
    before = (out / "samples.jsonl").read_text().splitlines()
    # A crash: the last sample of "square" never written, and a line cut short at the end.
    kept = [l for l in before if not (json.loads(l)["problem"] == "square" and json.loads(l)["index"] == 1)]
    (out / "samples.jsonl").write_text("\n".join(kept) + '\n{"problem": "dou')
    drawn.clear()
    results = asyncio.run(_evaluate(served.url, pool, tokenizer, rendered, out, n=2, counter=drawn))
    assert sorted(drawn) == [("eval/square", 0), ("eval/square", 1)]  # only the partial problem, whole
    assert results["resumed_problems"] == len(rendered) - 1
    after = (out / "samples.jsonl").read_text().splitlines()
    assert set(before) - set(after) == set()  # same seeds: the redrawn samples are the same samples
    assert len(after) == len(before)
    check_consistent(out, 2, [1])
    drawn.clear()
    asyncio.run(_evaluate(served.url, pool, tokenizer, rendered, out, n=2, counter=drawn))
    assert drawn == []  # everything finished: nothing drawn
    with pytest.raises(evaluation.EvaluationError, match="other settings.*n: folder 2 vs now 3"):
        asyncio.run(_evaluate(served.url, pool, tokenizer, rendered, out, n=3))


def test_evaluate_without_a_folder_returns_the_same_structure(served, pool, prompts):
    tokenizer, rendered = prompts
    results = asyncio.run(_evaluate(served.url, pool, tokenizer, rendered[:2], None, n=1))
    assert results["totals"]["problems"] == 2 and results["totals"]["samples"] == 2
    assert set(evaluation.metrics(results)) >= {"eval/pass@1", "eval/format_error_rate", "eval/truncated_frac"}


def _result(folder, rows, **extra):
    folder.mkdir()
    results = {"status": "complete", "ks": [1], "n": 4, "sandbox": {"float_tolerance": False},
               "problems": [{"id": i, "n": 4, "c": c} for i, c in rows], **extra}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_reports_difference_interval_sign_test_and_flips(tmp_path, capsys):
    a = _result(tmp_path / "a", [("p1", 0), ("p2", 4), ("p3", 2), ("p4", 1), ("p5", 0)])
    b = _result(tmp_path / "b", [("p1", 3), ("p2", 4), ("p3", 0), ("p4", 4), ("p5", 0)],
                sandbox={"float_tolerance": True})
    assert main(["compare", str(a), str(b), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    rates_a, rates_b = [0, 1, 0.5, 0.25, 0], [0.75, 1, 0, 1, 0]
    assert c["diff"] == pytest.approx(sum(rates_b) / 5 - sum(rates_a) / 5)
    assert c["ci95"][0] <= c["diff"] <= c["ci95"][1]
    assert c["sign_test"] == passk.sign_test(rates_a, rates_b)
    assert [(f["id"], f["gained"]) for f in c["flipped"]] == [("p1", True), ("p3", False)]
    assert any("different sandbox modes" in n for n in c["notes"])
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "95% CI" in text and "+ p1" in text and "- p3" in text


def test_compare_refuses_different_problem_sets_unless_common(tmp_path, capsys):
    a = _result(tmp_path / "a", [("p1", 0), ("p2", 4), ("p3", 1)])
    b = _result(tmp_path / "b", [("p1", 4), ("p2", 4), ("p9", 1)])
    assert main(["compare", str(a), str(b)]) == 2
    assert "different problems: 2 shared, 1 only in A" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--common"]) == 0
    out = capsys.readouterr().out
    assert "2 problems (the common subset: 1 only in A, 1 only in B left out)" in out
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_compare_prints_ids_that_utf8_cannot_encode(tmp_path, capsys):
    """JSON allows a lone surrogate in a string; printing one crashed the text report."""
    a = _result(tmp_path / "a", [("p\ud800", 0), ("p2", 4)])
    b = _result(tmp_path / "b", [("p\ud800", 4), ("p2", 4)])
    assert main(["compare", str(a), str(b)]) == 0
    assert "+ p\\ud800: A 0/4 -> B 4/4" in capsys.readouterr().out


def test_compare_refuses_booleans_as_counts(tmp_path, capsys):
    a = _result(tmp_path / "a", [("p1", 0)])
    b = tmp_path / "b"
    b.mkdir()
    (b / "results.json").write_text(json.dumps({"problems": [{"id": "p1", "n": True, "c": True}]}))
    assert main(["compare", str(a), str(b)]) == 2
    assert "problems[0]: expected an object with id, n >= 1" in capsys.readouterr().err


def test_compare_resamples_are_bounded(tmp_path, capsys):
    """--resamples 10^9 drew a [resamples, problems] index array at once: a MemoryError."""
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "a", "b", "--resamples", "1000000000"])
    assert exit_.value.code == 2 and "<= 10,000,000" in capsys.readouterr().err


def test_compare_refuses_a_results_file_whose_ids_repeat(tmp_path, capsys):
    """The last row of an id won, silently, in the paired comparison."""
    a = _result(tmp_path / "a", [("p1", 0), ("p2", 4)])
    b = _result(tmp_path / "b", [("p1", 0), ("p1", 4)])
    assert main(["compare", str(a), str(b)]) == 2
    assert "problem ids repeat: ['p1']" in capsys.readouterr().err


def test_bad_input_gets_a_clear_error(problems_file, tiny_model_dir, tmp_path, capsys):
    base = ["--server", "http://127.0.0.1:9", "--tokenizer", str(tiny_model_dir), "--no-progress", "--n", "1",
            "--k", "1"]
    assert main(base + ["--problems", str(problems_file), "--window", "2030-01-01:2030-12-31"]) == 2
    assert "no problems left" in (err := capsys.readouterr().err) and "outside_window" in err
    assert main(base + ["--problems", str(problems_file), "--wait", "0.5", "--max-new-tokens", "8"]) == 2
    assert "server unreachable" in (err := capsys.readouterr().err) and "127.0.0.1:9" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(PROBLEMS[0]) + "\n{not json\n")
    assert main(base + ["--problems", str(broken), "--strict"]) == 2
    assert "broken.jsonl row 1 (line 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--problems", str(problems_file), "--k", "1,8", "--n", "4"])
    assert "each k must be in 1..--n" in capsys.readouterr().err


def test_compare_counts_the_verdicts_a_grading_mode_changes(tmp_path):
    """Same completions graded in two sandbox modes: compare says how many verdicts moved."""
    from rl.evaluation import compare, load_results

    def folder(name, sandbox, verdicts):
        d = tmp_path / name
        d.mkdir()
        lines = [{"problem": "p", "index": i, "output_ids": [1, i], "verdict": v} for i, v in enumerate(verdicts)]
        (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        c = sum(v == "accepted" for v in verdicts)
        (d / "results.json").write_text(json.dumps({"sandbox": sandbox, "status": "complete",
                                                    "problems": [{"id": "p", "n": len(verdicts), "c": c}]}))
        return load_results(d)

    a = folder("a", {"lcb_exact": False}, ["accepted", "runtime_error", "wrong_answer"])
    b = folder("b", {"lcb_exact": True}, ["accepted", "accepted", "wrong_answer"])
    c = compare(a, b)
    assert c["regraded"] == {"same_completions": 3, "changed": 1}
    assert any("changed 1 of 3 verdicts" in note for note in c["notes"])
    # damaged lines (not objects, not UTF-8) are skipped, as lines cut short are
    with (tmp_path / "b" / "samples.jsonl").open("ab") as f:
        f.write(b"5\n\xff\xfe[]\n{\"problem\": [\"p\"]}\n")
    assert compare(a, b)["regraded"] == {"same_completions": 3, "changed": 1}


@pytest.mark.parametrize("results", ["[]", "null"])
def test_resume_refuses_a_results_file_that_is_not_an_object(tmp_path, results):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text(results)
    with pytest.raises(evaluation.EvaluationError, match="results.json: not an rl.evaluate results file"):
        evaluation._resume(out, {}, {"p"}, 2)


@pytest.mark.parametrize("change", [{"length": None}, {"verdict": [1]}, {"passed": 1}, {"length": True}])
def test_resume_redoes_a_problem_whose_sample_line_has_a_field_of_the_wrong_type(tmp_path, change):
    """Such a line (a damaged folder) was taken, and summing its fields crashed the resume."""
    out = tmp_path / "eval"
    out.mkdir()
    setup = {k: 1 for k in evaluation._RESUME_KEYS}
    (out / "results.json").write_text(json.dumps(setup))
    line = {"problem": "p", "passed": True, "verdict": "accepted", "length": 7, "truncated": False,
            "format_error": False}
    (out / "samples.jsonl").write_text(json.dumps({**line, "index": 0}) + "\n" + json.dumps({**line, "index": 1}) + "\n")
    assert list(evaluation._resume(out, setup, {"p"}, 2)) == ["p"]
    (out / "samples.jsonl").write_text(json.dumps({**line, "index": 0}) + "\n"
                                       + json.dumps({**line, "index": 1, **change}) + "\n")
    assert evaluation._resume(out, setup, {"p"}, 2) == {}
    assert (out / "samples.jsonl").read_text() == ""  # the unfinished problem's lines are cut: it is redone


@pytest.mark.parametrize("argv", [["compare", "a", "b", "--resamples", "0"], ["--temperature", "nan"],
                                  ["--time-limit", "-1"], ["--memory-mb", "0"], ["--window", "2024-13-01:"],
                                  ["--wait", "nan"], ["--max-running-requests", "0"], ["--out", ""]])
def test_bad_numbers_are_refused_before_anything_starts(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ([] if argv[0] == "compare" else ["--model", "m", "--problems", "p"]))
    assert exit_.value.code == 2 and argv[-2].lstrip("-") in capsys.readouterr().err


def test_missing_model_folder_is_named(tmp_path):
    from rl.data.prompts import load_tokenizer
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
