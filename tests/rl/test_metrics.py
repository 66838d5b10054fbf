"""A run's metrics.jsonl on resume: cut back to the restored step, and never silently losing a line."""
import json

import pytest

from rl.loop import _summary
from rl.metrics import METRICS_FILE, RunLogger, read_metrics
from rl.stream import ProblemStream


def test_resume_cuts_back_to_the_step_and_keeps_a_copy_of_lines_it_cannot_read(tmp_path, capsys):
    rows = [json.dumps({"step": s, "eval/pass@1": 0.5}) for s in range(4)]
    lines = [rows[0], "{garbage", rows[1], "5", json.dumps({"step": "2"}), rows[2], rows[3]]
    (tmp_path / METRICS_FILE).write_text("\n".join(lines) + "\n")
    logger = RunLogger(tmp_path, resume_step=2)
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    [kept] = tmp_path.glob(f"{METRICS_FILE}.*.bak")
    assert kept.read_text().splitlines() == lines  # the edited lines are still there to recover
    assert "3 line(s) are not metrics rows" in capsys.readouterr().err


def test_a_clean_file_is_cut_back_without_a_copy(tmp_path):
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    RunLogger(tmp_path, resume_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert not list(tmp_path.glob("*.bak"))


def test_the_summary_skips_evaluations_that_are_not_numbers(tmp_path):
    history = [{"step": 0, "eval/pass@1": 0.25}, {"step": 5, "eval/pass@1": "x"}, {"step": 10, "eval/pass@1": 0.5}]
    assert _summary(history, tmp_path, {})["evals"] == [(0, 0.25), (10, 0.5)]


@pytest.mark.parametrize("position", [{"offset": 0}, {"epoch": "1", "offset": 0}, {"epoch": 0, "offset": -1}])
def test_a_bad_data_position_in_a_checkpoint_is_named(position):
    with pytest.raises(ValueError, match="data position .* needs integer epoch and offset"):
        ProblemStream(10, seed=0).restore(position)
