"""The real-SGLang launcher, tested by the commands it builds (SGLang itself needs a GPU machine)."""
import importlib.util
import json
import shlex
import sys

import pytest

from rl import serve
from rl.rollout import sglang

# Qwen/Qwen3-14B's config.json as published (the launcher reads only the context fields; the rest is
# there so the folder looks like the real one).
QWEN3_14B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "intermediate_size": 17408, "max_position_embeddings": 40960, "max_window_layers": 40, "model_type": "qwen3",
    "num_attention_heads": 40, "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936}


def model_folder(tmp_path, config=QWEN3_14B):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def dry_run(capsys, *argv, main=sglang.main):
    """The commands `--dry-run` prints, each split back into its argv."""
    assert main(["--dry-run", *argv]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_qwen3_14b_at_81920_gets_yarn_factor_2_over_its_40960(tmp_path, capsys):
    folder = model_folder(tmp_path)
    [server] = dry_run(capsys, "--engine", "sglang", "--model", str(folder), "--context-length", "81920",
                       "--tp", "2", "--mem-fraction", "0.85", "--port", "31000", main=serve.main)
    assert server[:3] == [sys.executable, "-m", "sglang.launch_server"]
    assert flag(server, "--model-path") == str(folder)
    assert (flag(server, "--tp-size"), flag(server, "--dp-size"), flag(server, "--port")) == ("2", "1", "31000")
    assert flag(server, "--mem-fraction-static") == "0.85"
    assert flag(server, "--context-length") == "81920"
    assert json.loads(flag(server, "--json-model-override-args")) == {
        "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 40960},
        "max_position_embeddings": 81920}


def test_qwen3_14b_at_its_native_40960_has_no_override(tmp_path, capsys):
    [server] = dry_run(capsys, "--model", str(model_folder(tmp_path)), "--context-length", "40960")
    assert flag(server, "--context-length") == "40960"
    assert "--json-model-override-args" not in server
    [server] = dry_run(capsys, "--model", str(model_folder(tmp_path)))
    assert "--context-length" not in server  # SGLang reads the checkpoint's own


def test_already_yarn_scaled_checkpoint_scales_from_its_original_length(tmp_path, capsys):
    config = {**QWEN3_14B, "max_position_embeddings": 65536,
              "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32768}}
    [server] = dry_run(capsys, "--model", str(model_folder(tmp_path, config)), "--context-length", "131072")
    assert json.loads(flag(server, "--json-model-override-args"))["rope_scaling"] == {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def test_several_servers_get_their_own_ports_and_gpus_behind_a_router(tmp_path, capsys):
    *servers, router = dry_run(capsys, "--model", str(model_folder(tmp_path)), "--servers", "3", "--tp", "2",
                               "--dp", "2", "--host", "0.0.0.0", "--port", "30000", "--weight-version", "7",
                               "--api-key", "k", "--", "--enable-torch-compile")
    assert len(servers) == 3
    assert [flag(s, "--port") for s in servers] == ["30001", "30002", "30003"]
    assert [flag(s, "--base-gpu-id") for s in servers] == ["0", "4", "8"]  # tp * dp = 4 GPUs each
    assert all(flag(s, "--host") == "0.0.0.0" and flag(s, "--weight-version") == "7" for s in servers)
    assert all(flag(s, "--api-key") == "k" and s[-1] == "--enable-torch-compile" for s in servers)
    assert router[:3] == [sys.executable, "-m", "sglang_router.launch_router"]
    urls = router[router.index("--worker-urls") + 1:router.index("--host")]
    assert urls == ["http://127.0.0.1:30001", "http://127.0.0.1:30002", "http://127.0.0.1:30003"]
    assert (flag(router, "--port"), flag(router, "--policy")) == ("30000", "cache_aware")


@pytest.mark.parametrize("config, field", [(None, "not found"), ("{not json", "cannot read it as JSON"),
                                           ({"max_position_embeddings": "40960"}, "max_position_embeddings"),
                                           ({"max_position_embeddings": 4096,
                                             "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "linear")])
def test_bad_model_folders_fail_naming_the_file_and_field(tmp_path, capsys, config, field):
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    assert sglang.main(["--model", str(tmp_path), "--context-length", "8192", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.json") in err and field in err


@pytest.mark.parametrize("argv", [["--tp", "0"], ["--servers", "0"], ["--context-length", "-5"],
                                  ["--mem-fraction", "1.5"], ["--port", "70000"], ["--not-a-flag"]])
def test_bad_flags_are_refused(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        sglang.main(["--model", str(model_folder(tmp_path)), *argv, "--dry-run"])
    assert exit_.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_without_sglang_installed_a_real_launch_says_how_to_install(tmp_path, capsys):
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here: a real launch would start it")
    assert sglang.main(["--model", str(model_folder(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "coderl[sglang]" in err and "GPU" in err
