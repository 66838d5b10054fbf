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


def test_parquet_rows_are_written_as_strict_json(tmp_path, capsys):
    """Kept parquet rows were dumped with default=str: NaN came out as a bare NaN (not JSON) and bytes as
    their Python repr. Now NaN is null, UTF-8 bytes are text, and a row with other bytes is left out by name."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in HELDOUT_FILE.read_text().splitlines()[:3]]
    table = pa.Table.from_pylist([dict(r, blob=blob, score=score) for r, blob, score in
                                  zip(rows, [b"caf\xc3\xa9", b"\xff\xfe", b"x"], [float("nan"), 1.5, float("inf")])])
    problems = tmp_path / "train.parquet"
    pq.write_table(table, problems)
    (tmp_path / "results.json").write_text(json.dumps({"problems": [{"id": r["id"], "n": 8, "c": 4} for r in rows]}))
    out = tmp_path / "kept.jsonl"
    assert rl.difficulty.main([str(tmp_path), "--problems", str(problems), "--out", str(out)]) == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))

    written = [strict(line) for line in out.read_text().splitlines()]
    assert [(w["id"], w["blob"], w["score"]) for w in written] == [(rows[0]["id"], "café", None), (rows[2]["id"], "x", None)]
    assert [{k: v for k, v in w.items() if k not in ("blob", "score")} for w in written] == [rows[0], rows[2]]
    captured = capsys.readouterr()
    assert (strict(captured.out)["kept"], strict(captured.out)["unwritable"]) == (2, 1)
    assert f"{problems} row 1" in captured.err and "not UTF-8" in captured.err


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"problems": []}))
    out = tmp_path / "kept.jsonl"
    (tmp_path / "kept.jsonl.tmp").mkdir()  # a folder where the output is staged
    assert rl.difficulty.main([str(tmp_path), "--problems", str(HELDOUT_FILE), "--out", str(out)]) == 2
    assert f"error: cannot write {out}" in capsys.readouterr().err
