"""The offline difficulty filter: rows kept by the pass rate of an rl.evaluate results file."""
import json

import pytest

import rl.difficulty
from rl.tiny.tasks import HELDOUT_FILE


def test_keeps_the_pass_rate_window_and_writes_rows_as_published(tmp_path, capsys):
    rows = [json.loads(line) for line in HELDOUT_FILE.read_text().splitlines()[:5]]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{\"not\": \"a problem\"}\n")
    # 0/8 too hard, 8/8 too easy, 1/8 and 7/8 kept; the fifth problem was not evaluated.
    counts = [(8, 0), (8, 8), (8, 1), (8, 7)]
    results = {"problems": [{"id": r["id"], "n": n, "c": c} for r, (n, c) in zip(rows, counts)]}
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "results.json").write_text(json.dumps(results))
    out = tmp_path / "kept.jsonl"
    assert rl.difficulty.main([str(tmp_path / "ev"), "--problems", str(problems), "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [rows[2], rows[3]]
    report = json.loads(capsys.readouterr().out)
    assert (report["kept"], report["too_hard"], report["too_easy"], report["not_evaluated"], report["bad_row"]) \
        == (2, 1, 1, 1, 1)


def test_bad_results_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{\"problems\": [{\"id\": 3}]}")
    assert rl.difficulty.main([str(tmp_path), "--problems", str(HELDOUT_FILE), "--out", str(tmp_path / "o")]) == 2
    assert "problems[0]" in capsys.readouterr().err


def test_rows_without_an_id_match_the_ids_rl_evaluate_recorded(tmp_path, capsys):
    """rl.evaluate records load_problems' ids ("FILE#ROW"); the filter looked rows up as "STEM-ROW"."""
    from rl.data import load_problems

    rows = [{k: v for k, v in json.loads(line).items() if k != "id"} for line in HELDOUT_FILE.read_text().splitlines()[:2]]
    problems = tmp_path / "train.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [r.id for r in load_problems(problems)[0]]
    (tmp_path / "results.json").write_text(json.dumps({"problems": [{"id": i, "n": 8, "c": 4} for i in ids]}))
    out = tmp_path / "kept.jsonl"
    assert rl.difficulty.main([str(tmp_path), "--problems", str(problems), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 2


def test_out_that_is_an_input_a_folder_or_unwritable_is_refused_before_anything_is_written(tmp_path, capsys):
    """--out equal to a --problems file overwrote the problem set with its filtered part."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(HELDOUT_FILE.read_text())
    (tmp_path / "results.json").write_text(json.dumps({"problems": []}))
    for out, message in [(problems, "is one of the --problems files"), (tmp_path, "is a directory"),
                         (tmp_path / "missing" / "o.jsonl", "does not exist")]:
        with pytest.raises(SystemExit):
            rl.difficulty.main([str(tmp_path), "--problems", str(problems), "--out", str(out)])
        assert message in capsys.readouterr().err
    assert problems.read_text() == HELDOUT_FILE.read_text()
