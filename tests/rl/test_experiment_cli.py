"""`python -m rl.train`: --dry-run prints JSON that loads back equal, a run saves its config.json
and hands the experiment to rl.loop.run, and bad input exits with errors naming file and key."""
import json
import subprocess
import sys

import pytest

import rl.train
from rl.experiment import REPO, Experiment, ExperimentError, load

TINY_MODEL_CONFIG = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 64, "hidden_size": 16,
                     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 512}


def test_dry_run_round_trips(capsys, tmp_path):
    assert rl.train.main(["tiny_gspo", "--dry-run", "--set", "rollout.group_size=4", "--set", "seed=3"]) == 0
    printed = capsys.readouterr().out
    exp = Experiment.from_json(printed)
    assert exp == load("tiny_gspo", ["rollout.group_size=4", "seed=3"])[0]
    # The printed JSON is itself an EXPERIMENT argument, and prints the same again.
    saved = tmp_path / "config.json"
    saved.write_text(printed)
    assert rl.train.main([str(saved), "--dry-run"]) == 0
    assert capsys.readouterr().out == printed


def test_dry_run_errors_exit_2_naming_file_and_key(capsys):
    assert rl.train.main(["tiny_dapo", "--dry-run", "--set", "rollout.group_size=3",
                          "--set", "batch.micro_batches=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: experiments/tiny_dapo.py (--set batch.micro_batches=5): batch.micro_batches: ")


def test_set_errors_name_the_value_applied_and_survive_deep_json(capsys):
    """A key set twice was blamed on its first value; a deeply nested JSON list was a RecursionError."""
    assert rl.train.main(["tiny_dapo", "--dry-run", "--set", "rollout.group_size=8",
                          "--set", "rollout.group_size=1"]) == 2
    assert "(--set rollout.group_size=1): rollout.group_size: must be >= 2" in capsys.readouterr().err
    assert rl.train.main(["tiny_dapo", "--dry-run", "--set", "data.train=" + "[" * 5000 + "]" * 5000]) == 2
    assert "data.train: a JSON list nested too deeply" in capsys.readouterr().err


def test_an_empty_run_dir_is_refused(capsys):
    """--run-dir "" was the current directory: the whole run was written there."""
    with pytest.raises(SystemExit) as exit_info:
        rl.train.main(["tiny_dapo", "--run-dir", ""])
    assert exit_info.value.code == 2 and "--run-dir: expected a folder, got an empty path" in capsys.readouterr().err


def test_dry_run_checks_a_fully_given_mesh_only(capsys):
    # The test session has 8 devices: a -1 axis is left to run time, a full mesh must fit now.
    assert rl.train.main(["tiny_dapo", "--dry-run", "--set", "mesh.fsdp=-1", "--set", "mesh.data=3"]) == 0
    assert rl.train.main(["tiny_dapo", "--dry-run", "--set", "mesh.fsdp=2", "--set", "mesh.data=2"]) == 2
    assert "mesh.fsdp: mesh data=2 fsdp=2 tensor=1 does not fit 8 devices" in capsys.readouterr().err


@pytest.fixture
def run_inputs(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_MODEL_CONFIG))
    problems = tmp_path / "problems.jsonl"
    problems.write_text("{}\n")
    return [f"model.path={model}", f"data.train={problems}", f"data.eval={problems}"]


def _set(assignments):
    return [arg for a in assignments for arg in ("--set", a)]


def test_a_run_saves_its_config_and_refuses_a_changed_one(tmp_path, run_inputs):
    exp = load("tiny_grpo", run_inputs)[0]
    run_dir = tmp_path / "run"
    rl.train.save_config(exp, run_dir)
    assert Experiment.from_json((run_dir / "config.json").read_text()) == exp
    rl.train.save_config(exp, run_dir)  # resuming with the same config is fine
    saved = (run_dir / "config.json").read_text()
    with pytest.raises(ExperimentError, match="changed: seed"):
        rl.train.save_config(load("tiny_grpo", run_inputs + ["seed=9"])[0], run_dir)
    assert (run_dir / "config.json").read_text() == saved


def test_a_run_checks_mesh_and_files(tmp_path, capsys, run_inputs):
    assert rl.train.main(["tiny_dapo", "--run-dir", str(tmp_path / "r"), *_set(run_inputs + ["mesh.data=3"])]) == 2
    assert "mesh.fsdp: mesh data=3 fsdp=-1 tensor=1 does not fit 8 devices" in capsys.readouterr().err
    assert rl.train.main(["tiny_dapo", "--run-dir", str(tmp_path / "r"),
                          *_set(run_inputs + [f"data.eval={tmp_path / 'gone.jsonl'}"])]) == 2
    assert "data.eval: no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    (tmp_path / "a_file").write_text("")
    assert rl.train.main(["tiny_dapo", "--run-dir", str(tmp_path / "a_file"), *_set(run_inputs)]) == 2
    assert f"run directory {tmp_path / 'a_file'}: FileExistsError" in capsys.readouterr().err


def test_module_entry_point():
    """The one subprocess: `python -m rl.train` exits 2 with errors, never a traceback."""
    out = subprocess.run([sys.executable, "-m", "rl.train", "tiny_dapo", "--dry-run", "--set", "rollout.top_p=2"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: experiments/tiny_dapo.py (--set rollout.top_p=2): rollout.top_p: ")


def test_help_lists_the_experiments(capsys):
    with pytest.raises(SystemExit) as e:
        rl.train.main(["--help"])
    assert e.value.code == 0 and "nouscoder_14b_gspo_plus_40k" in capsys.readouterr().out
