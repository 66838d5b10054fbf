"""A run's metrics.jsonl on resume: cut back to the restored step, and never silently losing a line."""
import json

from rl.loop import _summary
from rl.metrics import METRICS_FILE, RunLogger, read_metrics


def test_resume_cuts_back_to_the_step_and_keeps_a_copy_of_lines_it_cannot_read(tmp_path, capsys):
    rows = [json.dumps({"step": s, "eval/pass@1": 0.5}) for s in range(4)]
    lines = [rows[0], "{garbage", rows[1], "5", json.dumps({"step": "2"}), rows[2], rows[3]]
    (tmp_path / METRICS_FILE).write_bytes(("\n".join(lines) + "\n").encode() + b'{"step": 1, "x": "\xff"}\n')
    logger = RunLogger(tmp_path, resume_step=2)
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    [kept] = tmp_path.glob(f"{METRICS_FILE}.*.bak")
    assert kept.read_bytes().splitlines()[:-1] == [line.encode() for line in lines]  # still there to recover
    assert "4 line(s) are not metrics rows" in capsys.readouterr().err


def test_a_clean_file_is_cut_back_without_a_copy(tmp_path):
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    RunLogger(tmp_path, resume_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert not list(tmp_path.glob("*.bak"))


def test_the_summary_skips_evaluations_that_are_not_numbers(tmp_path):
    history = [{"step": 0, "eval/pass@1": 0.25}, {"step": 5, "eval/pass@1": "x"}, {"step": 10, "eval/pass@1": 0.5}]
    assert _summary(history, tmp_path, {})["evals"] == [(0, 0.25), (10, 0.5)]
