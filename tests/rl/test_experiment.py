"""Experiment files: every one validates, the 14B ones resolve the real model shapes, every error
names its file and key, --set parses by type, JSON round-trips, and ablations differ only where
their recipes do."""
import dataclasses
import difflib
import importlib.util
import json
from pathlib import Path

import pytest

from rl.experiment import (EXPERIMENTS_DIR, Experiment, ExperimentError, apply_overrides, available,
                           check_resources, keys, load, model_config, objective_options, validate)

RUNNABLE = [name for name in available() if name != "base"]  # base has no model.path on purpose
DEEPCODER = ["deepcoder_14b_grpo_plus_16k", "deepcoder_14b_grpo_plus_32k"]
NOUSCODER = ["nouscoder_14b_dapo_40k", "nouscoder_14b_gspo_40k", "nouscoder_14b_gspo_plus_40k"]


def test_required_files_exist():
    required = {"base", *DEEPCODER, *NOUSCODER, "tiny_dapo", "tiny_grpo", "tiny_gspo", "tiny_gspo_plus"}
    assert required <= set(available())


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_experiment_validates(name):
    exp, source = load(name)
    assert exp.name == name and source.files[0] == EXPERIMENTS_DIR / f"{name}.py"
    validate(exp, source, devices=8)  # fsdp=-1 meshes fit the test's 8 devices


def test_base_needs_only_a_model_path():
    with pytest.raises(ExperimentError) as e:
        load("base")
    assert len(e.value.errors) == 1 and "experiments/base.py: model.path: empty" in str(e.value)
    load("base", ["model.path=some/folder"])


# ---- the 14B files resolve the real checkpoints' shapes ----------------------------------------
def _real_shape_configs() -> dict:
    """The real config.json files tests/models carries (with tiny sizes), given the published 14B
    sizes (docs/models.md)."""
    path = Path(__file__).resolve().parent.parent / "models" / "test_config_coverage.py"
    spec = importlib.util.spec_from_file_location("_config_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = dict(hidden_size=5120, num_attention_heads=40, num_key_value_heads=8, rope_theta=1000000)
    return {
        "qwen3": {**module.QWEN3_14B, **sizes, "intermediate_size": 17408, "num_hidden_layers": 40,
                  "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960},
        "qwen2": {**module.R1_DISTILL_14B, **sizes, "intermediate_size": 13824, "num_hidden_layers": 48,
                  "vocab_size": 152064, "max_position_embeddings": 131072},
    }


@pytest.fixture(scope="module")
def real_configs(tmp_path_factory):
    folders = {}
    for arch, hf in _real_shape_configs().items():
        folder = tmp_path_factory.mktemp(arch)
        (folder / "config.json").write_text(json.dumps(hf))
        folders[arch] = folder
    return folders


EXPECTED_SHAPES = {  # (arch, hidden, intermediate, layers, heads, kv heads, head_dim, vocab, rms eps, context)
    "qwen3": ("qwen3", 5120, 17408, 40, 40, 8, 128, 151936, 1e-6, 40960),
    "qwen2": ("qwen2", 5120, 13824, 48, 40, 8, 128, 152064, 1e-5, 131072),
}


@pytest.mark.parametrize("name", DEEPCODER + NOUSCODER)
def test_14b_experiments_resolve_the_real_model_shapes(name, real_configs):
    arch = "qwen2" if name.startswith("deepcoder") else "qwen3"
    exp, source = load(name, [f"model.path={real_configs[arch]}"])
    present = (str(real_configs[arch] / "config.json"),)  # the problem files are not here: any file that is
    cfg = check_resources(dataclasses.replace(exp, data=dataclasses.replace(exp.data, train=present, eval=()),
                                              schedule=dataclasses.replace(exp.schedule, init_from="")), source)
    got = (cfg.arch, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
           cfg.head_dim, cfg.vocab_size, cfg.rms_norm_eps, cfg.max_position_embeddings)
    assert got == EXPECTED_SHAPES[arch]
    assert (cfg.dtype, cfg.param_dtype, cfg.remat, cfg.rope_scaling) == ("bfloat16", "float32", "full", ())


def test_attention_tile_reaches_the_model_config(real_configs):
    exp, _ = load("nouscoder_14b_gspo_40k", [f"model.path={real_configs['qwen3']}", "model.attention_block=256"])
    assert (model_config(exp).attention, model_config(exp).attention_block) == ("blockwise", 256)


def test_max_context_turns_on_yarn(real_configs):
    exp, _ = load("nouscoder_14b_gspo_40k", [f"model.path={real_configs['qwen3']}", "model.max_context=81920"])
    cfg = model_config(exp)
    assert dict(cfg.rope_scaling) == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 40960}
    assert cfg.max_position_embeddings == 81920


def test_run_time_checks_name_the_key(real_configs, tmp_path):
    exp, source = load("nouscoder_14b_gspo_40k", [f"model.path={real_configs['qwen3']}",
                                                  "rollout.max_response_tokens=40000",
                                                  f"data.eval={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(ExperimentError) as e:
        check_resources(exp, source)
    text = str(e.value)
    assert "(--set rollout.max_response_tokens=40000): rollout.max_response_tokens" in text and "42048" in text
    assert "data.eval: no such file" in text and "experiments/nouscoder_14b.py" in text  # data.train's line
    exp, source = load("nouscoder_14b_gspo_40k", [f"model.path={real_configs['qwen3']}",
                                                  "rollout.context_stages=5:40000"])
    with pytest.raises(ExperimentError, match=r"\(--set rollout.context_stages=5:40000\): rollout.context_stages: "
                                              r"data.max_prompt_tokens \+ rollout.context_stages = 42048"):
        check_resources(exp, source)
    exp, source = load("nouscoder_14b_gspo_40k", [f"model.path={real_configs['qwen3']}", "data.train="])
    with pytest.raises(ExperimentError, match=r"\(--set data.train=\): data.train: no training problem files"):
        check_resources(exp, source)
    with pytest.raises(ExperimentError, match=r"model.path=.*missing_model.*model.path: .*no such config file"):
        check_resources(*load("tiny_dapo", [f"model.path={tmp_path / 'missing_model'}"]))


# ---- the published settings -----------------------------------------------------------------------
def test_seed_settings():
    dc16, _ = load("deepcoder_14b_grpo_plus_16k")
    dc32, _ = load("deepcoder_14b_grpo_plus_32k")
    assert (dc16.objective.name, objective_options(dc16), dc16.objective.kl_coef) == (
        "grpo_plus", {"eps_low": 0.2, "eps_high": 0.28}, 0.0)
    assert (dc16.data.prompt, dc16.data.thinking, dc16.rollout.max_response_tokens) == ("r1", True, 16384)
    assert dc32.rollout.max_response_tokens == 32768
    assert dc32.schedule.init_from == "runs/deepcoder_14b_grpo_plus_16k"
    for name in NOUSCODER:
        exp, _ = load(name)
        assert (exp.sandbox.reward, exp.sandbox.time_limit, exp.sandbox.memory_mb) == ("pm1", 15.0, 4096)
        assert (exp.rollout.temperature, exp.rollout.top_p) == (1.0, 1.0)
        assert (exp.rollout.eval_temperature, exp.rollout.eval_top_p) == (0.6, 0.95)
    for name in ("tiny_dapo", "tiny_grpo", "tiny_gspo", "tiny_gspo_plus"):
        exp, _ = load(name)
        assert (exp.rollout.group_size, exp.mesh.fsdp, exp.model.dtype) == (8, -1, "float32")


# ---- inheritance by difference ------------------------------------------------------------------
def _changed_lines(a: str, b: str) -> list[str]:
    diff = difflib.unified_diff((EXPERIMENTS_DIR / f"{a}.py").read_text().splitlines(),
                                (EXPERIMENTS_DIR / f"{b}.py").read_text().splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("a,b", [("nouscoder_14b_dapo_40k", "nouscoder_14b_gspo_40k"),
                                 ("nouscoder_14b_dapo_40k", "nouscoder_14b_gspo_plus_40k"),
                                 ("tiny_grpo", "tiny_gspo")])
def test_ablation_files_differ_only_in_the_objective(a, b):
    changed = _changed_lines(a, b)
    assert changed and all("objective=dict(name=" in line for line in changed), changed
    ea, eb = load(a)[0].to_dict(), load(b)[0].to_dict()
    differing = {f"{s}.{k}" for s in ea if isinstance(ea[s], dict) for k in ea[s] if ea[s][k] != eb[s][k]}
    assert differing == {"objective.name"}


# ---- every error names the file and the key ---------------------------------------------------
BAD = [  # (section, field changes, the key named, a fragment of the message)
    ("objective", dict(name="gspoo"), "objective.name", "did you mean 'gspo'"),
    ("objective", dict(name="grpo", eps_low=0.1, eps_high=-0.1), "objective.eps_high", ">= 0"),
    ("objective", dict(overlong="truncate"), "objective.overlong", "zero_advantage"),
    ("objective", dict(kl_coef=-0.1), "objective.kl_coef", ">= 0"),
    ("objective", dict(tis_cap=0.0), "objective.tis_cap", "> 0"),
    ("rollout", dict(group_size=1), "rollout.group_size", "advantage 0"),
    ("rollout", dict(group_size="8"), "rollout.group_size", "expected int, got str"),
    ("rollout", dict(temperature=0.0), "rollout.temperature", "> 0"),
    ("rollout", dict(top_p=1.5), "rollout.top_p", "(0, 1]"),
    ("rollout", dict(max_response_tokens=-5), "rollout.max_response_tokens", ">= 1"),
    ("rollout", dict(servers=("localhost:30000",)), "rollout.servers", "http"),
    ("rollout", dict(context_stages=("10-128",)), "rollout.context_stages", "STEP:TOKENS"),
    ("rollout", dict(context_stages=("10:128", "5:256")), "rollout.context_stages", "increase"),
    ("rollout", dict(dynamic_sampling="yes"), "rollout.dynamic_sampling", "expected bool"),
    ("model", dict(dtype="bf16"), "model.dtype", "bfloat16"),
    ("model", dict(remat="partial"), "model.remat", "matmuls"),
    ("model", dict(attention="flash"), "model.attention", "cudnn"),
    ("model", dict(attention_block=0), "model.attention_block", ">= 1"),
    ("mesh", dict(data=0), "mesh.data", ">= 1"),
    ("data", dict(window="2024-02-30:2024-03-01"), "data.window", "not a YYYY-MM-DD date"),
    ("data", dict(eval_window="2025-01-01:2024-01-01"), "data.eval_window", "starts after it ends"),
    ("data", dict(prompt="chatml"), "data.prompt", "lcb"),
    ("data", dict(train=("a.jsonl", 3)), "data.train", "list of str"),
    ("sandbox", dict(reward="pm2"), "sandbox.reward", "did you mean 'pm1'"),
    ("sandbox", dict(time_limit=0), "sandbox.time_limit", "> 0"),
    ("batch", dict(prompts_per_step=3, micro_batches=5), "batch.micro_batches", "3 * 8 = 24"),
    ("batch", dict(prompts_per_step=-1), "batch.prompts_per_step", ">= 1"),
    ("batch", dict(max_tokens_per_row=100), "batch.max_tokens_per_row", "320"),
    ("optimizer", dict(lr=0.0), "optimizer.lr", "> 0"),
    ("optimizer", dict(warmup_steps=50), "optimizer.warmup_steps", "schedule.steps * batch.mini_batches = 20]"),
    ("batch", dict(pack=False, max_tokens_per_row=100), "batch.max_tokens_per_row", "320"),
    ("optimizer", dict(b2=1.0), "optimizer.b2", "[0, 1)"),
    ("schedule", dict(keep_checkpoints=0), "schedule.keep_checkpoints", ">= 1"),
    ("advantages", dict(ddof=2), "advantages.ddof", "0 (population std)"),
]


def _write(folder: Path, body: str) -> Path:
    path = folder / "my_experiment.py"
    path.write_text("from experiments import tiny_dapo\n\n" + body)
    return path


@pytest.mark.parametrize("section,changes,key,fragment", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_validation_errors_name_the_file_the_line_and_the_key(tmp_path, section, changes, key, fragment):
    field_lines = "".join(f"        {k}={v!r},\n" for k, v in changes.items())
    body = f"EXPERIMENT = tiny_dapo.EXPERIMENT.replace(\n    {section}=dict(\n{field_lines}    ),\n)\n"
    path = _write(tmp_path, body)
    with pytest.raises(ExperimentError) as e:
        load(str(path))
    field = key.split(".")[1]
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(field + "="))
    matching = [err for err in e.value.errors if f": {key}: " in err]
    assert matching, e.value.errors
    assert matching[0].startswith(f"{path}:{line}: {key}: ") and fragment in matching[0], matching[0]


def test_objective_option_it_does_not_have():
    # Every built-in objective has eps_low and eps_high: register one without them.
    from rl.losses import OBJECTIVES, Objective
    OBJECTIVES["_no_clip"] = Objective("_no_clip", None, None, {})
    try:
        with pytest.raises(ExperimentError, match=r"objective.eps_low: objective '_no_clip' has no option eps_low"):
            load("tiny_dapo", ["objective.name=_no_clip", "objective.eps_low=0.1"])
        load("tiny_dapo", ["objective.name=_no_clip"])
    finally:
        del OBJECTIVES["_no_clip"]


def test_tis_needs_rollout_logprobs():
    with pytest.raises(ExperimentError, match=r"\(--set objective.tis_cap=2\): objective.tis_cap: .*rollout.logprobs"):
        load("tiny_dapo", ["rollout.logprobs=false", "objective.tis_cap=2"])
    assert load("tiny_dapo", ["objective.tis_cap=2"])[0].objective.tis_cap == 2.0


def test_mesh_against_the_device_count():
    exp, source = load("tiny_dapo")
    for mesh, ok in [(dict(fsdp=-1), True), (dict(data=2, fsdp=2, tensor=2), True), (dict(data=3, fsdp=-1), False),
                     (dict(data=2, fsdp=2, tensor=1), False), (dict(data=-1, fsdp=-1), False)]:
        candidate = exp.replace(mesh=dict(data=1, fsdp=-1, tensor=1)).replace(mesh=mesh)
        if ok:
            validate(candidate, source, devices=8)
        else:
            with pytest.raises(ExperimentError, match=r"experiments/tiny_dapo.py:\d+: mesh\.(data|fsdp)"):
                validate(candidate, source, devices=8)
    # A file without a mesh section names no line (its data=dict(...) line is not mesh.data).
    exp, source = load("nouscoder_14b_gspo_40k")
    with pytest.raises(ExperimentError) as e:
        validate(exp.replace(mesh=dict(data=0)), source)
    assert e.value.errors == ["experiments/nouscoder_14b_gspo_40k.py: mesh.data: must be >= 1, or -1 for the "
                              "remaining devices; got 0"]


def test_errors_inside_an_experiment_file_name_its_line(tmp_path):
    cases = {
        "EXPERIMENT = tiny_dapo.EXPERIMENT.replace(\n    rollout=dict(\n        group_sise=4,\n    ),\n)\n":
            (5, "unknown key rollout.group_sise (did you mean 'rollout.group_size'?)"),
        "EXPERIMENT = tiny_dapo.EXPERIMENT.replace(rolout=dict(group_size=4))\n":
            (3, "unknown key 'rolout' (did you mean 'rollout'?)"),
        "x = 1\nEXPERIMENT = tiny_dapo.EXPERIMENT.replace(seed=1 / 0)\n": (4, "ZeroDivisionError: division by zero"),
        "EXPERIMENT = tiny_dapo.EXPERIMENT.replace(\n": (3, "SyntaxError"),
        "EXPERIMENT = tiny_dapo.EXPERIMENT.replace(objective='gspo')\n": (3, "objective: expected a dict"),
        "import sys\nsys.exit(3)\n": (4, "SystemExit: 3"),
    }
    for body, (line, fragment) in cases.items():
        path = _write(tmp_path, body)
        with pytest.raises(ExperimentError) as e:
            load(str(path))
        assert str(e.value).startswith(f"{path}:{line}: ") and fragment in str(e.value), str(e.value)
    path = _write(tmp_path, "config = tiny_dapo.EXPERIMENT\n")
    with pytest.raises(ExperimentError, match="my_experiment.py: defines no EXPERIMENT"):
        load(str(path))


def test_unknown_experiment_names():
    with pytest.raises(ExperimentError, match=r"tiny_gpso: no experiment .*did you mean 'tiny_gspo'"):
        load("tiny_gpso")
    with pytest.raises(ExperimentError, match="nowhere/x.py: no such experiment file$"):
        load("nowhere/x.py")
    for spec in ("tiny_dapo.py", "experiments_typo/tiny_dapo"):
        with pytest.raises(ExperimentError, match=f"{spec}: no such experiment file; did you mean 'tiny_dapo'"):
            load(spec)
    with pytest.raises(ExperimentError, match=r"exp.yaml: expected an experiment .py file, a saved config.json"):
        load("exp.yaml")


def test_sections_built_whole_or_wrongly(tmp_path):
    from rl.experiment import RolloutSection
    base, _ = load("tiny_dapo")
    assert base.replace(rollout=RolloutSection(context_stages=["1:64"])).rollout.context_stages == ("1:64",)
    path = tmp_path / "direct.py"
    path.write_text("from rl.experiment import Experiment\n\nEXPERIMENT = Experiment(\n    model={'path': 'm'},\n)\n")
    with pytest.raises(ExperimentError, match=r"direct.py:4: model: expected a ModelSection, got dict"):
        load(str(path))
    with pytest.raises(ExperimentError, match="at most 255 bytes"):
        load("tiny_dapo", ["name=" + "a" * 256])


def test_warmup_counts_optimizer_steps():
    """lr warmup follows Adam's step count, mini_batches per RL step: 30 of 20 x 2 was refused."""
    with pytest.raises(ExperimentError, match=r"optimizer.warmup_steps: must be in \[0, .* = 20\]"):
        load("tiny_dapo", ["schedule.steps=20", "batch.micro_batches=1", "optimizer.warmup_steps=30"])
    exp, _ = load("tiny_dapo", ["schedule.steps=20", "batch.mini_batches=2", "batch.micro_batches=1",
                                "optimizer.warmup_steps=30"])
    assert exp.optimizer.warmup_steps == 30


def test_a_file_outside_experiments_derives_from_one(tmp_path):
    path = _write(tmp_path, "EXPERIMENT = tiny_dapo.EXPERIMENT.replace(rollout=dict(group_size=4), seed=7)\n")
    exp, source = load(str(path))
    base, _ = load("tiny_dapo")
    assert exp == base.replace(name="my_experiment", rollout=dict(group_size=4), seed=7)
    assert source.files[:2] == (path.resolve(), EXPERIMENTS_DIR / "tiny_dapo.py")


# ---- --set -----------------------------------------------------------------------------------------
def test_set_parses_each_type():
    exp, source = load("tiny_dapo", [
        "rollout.dynamic_sampling=False", "rollout.group_size=4", "optimizer.lr=3e-5", "data.prompt=r1",
        "data.train=a.jsonl, b.parquet", "rollout.servers=[\"http://h1:30000\"]", "objective.eps_high=0.3",
        "seed=5", "name=renamed"])
    assert (exp.rollout.dynamic_sampling, exp.rollout.group_size, exp.optimizer.lr, exp.data.prompt) == (
        False, 4, 3e-5, "r1")
    assert exp.data.train == ("a.jsonl", "b.parquet") and exp.rollout.servers == ("http://h1:30000",)
    assert (exp.objective.eps_high, exp.seed, exp.name) == (0.3, 5, "renamed")
    assert load("tiny_dapo", ["objective.eps_high=none", "data.eval="])[0].objective.eps_high is None
    assert load("tiny_dapo", ["data.eval="])[0].data.eval == ()
    assert dict(source.overrides)["optimizer.lr"] == "3e-5"


@pytest.mark.parametrize("assignment,fragment", [
    ("rollout.group_size=eight", "rollout.group_size: expected int, got 'eight'"),
    ("rollout.dynamic_sampling=maybe", "rollout.dynamic_sampling: expected true or false"),
    ("objective.tis_cap=big", "objective.tis_cap: expected finite float or None"),
    ("rollout.temprature=0.7", "unknown key 'rollout.temprature' (did you mean 'rollout.temperature'?)"),
    ("objective=gspo", "objective is a section; set one of its keys: objective.name"),
    ("rollout.group_size", "expected key.path=value"),
])
def test_set_errors_name_the_key(assignment, fragment):
    with pytest.raises(ExperimentError) as e:
        load("tiny_dapo", [assignment])
    assert str(e.value).startswith(f"experiments/tiny_dapo.py: --set {assignment}") and fragment in str(e.value)


def test_every_key_can_be_set_from_its_own_text():
    exp, _ = load("nouscoder_14b_gspo_40k")
    flat = {key: exp.get(key) for key in keys()}
    text = {k: ",".join(v) if isinstance(v, tuple) else "none" if v is None else str(v) for k, v in flat.items()}
    again, _ = apply_overrides(Experiment(), [f"{k}={v}" for k, v in text.items()])
    assert again == exp


# ---- JSON ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_json_round_trip(name):
    exp, _ = load(name, validated=False)
    assert Experiment.from_json(exp.to_json()) == exp
    assert json.loads(exp.to_json())["name"] == name


def test_json_unknown_and_mistyped_keys():
    data = load("tiny_dapo")[0].to_dict()
    data["rollout"]["group_sizes"] = 8
    data["optimiser"] = {}
    with pytest.raises(ExperimentError) as e:
        Experiment.from_dict(data, "runs/x/config.json")
    assert e.value.errors == [
        "runs/x/config.json: unknown key rollout.group_sizes (did you mean 'rollout.group_size'?)",
        "runs/x/config.json: unknown key 'optimiser' (did you mean 'optimizer'?)"]
    with pytest.raises(ExperimentError, match="runs/x/config.json: not valid JSON"):
        Experiment.from_json("{", "runs/x/config.json")


def test_context_stages():
    exp, _ = load("tiny_dapo", ["rollout.context_stages=0:32,10:48"])
    assert [exp.rollout.max_response_tokens_at(s) for s in (0, 9, 10, 100)] == [32, 32, 48, 48]
    assert load("tiny_dapo")[0].rollout.max_response_tokens_at(5) == 64
    with pytest.raises(ExperimentError, match="batch.max_tokens_per_row: .* = 384"):
        load("tiny_dapo", ["rollout.context_stages=0:32,10:128", "batch.max_tokens_per_row=320"])


@pytest.mark.parametrize("assignment", ["optimizer.lr=inf", "rollout.temperature=nan", "objective.tis_cap=-inf"])
def test_non_finite_floats_are_refused(assignment):
    """float("inf") parses; the dry run then wrote `Infinity`, which is no JSON."""
    key = assignment.split("=")[0]
    with pytest.raises(ExperimentError, match=f"--set {assignment}.*{key}: expected finite float"):
        load("tiny_dapo", [assignment])


def test_files_that_are_not_utf8_or_too_deep_still_get_their_message(tmp_path):
    """A byte that is not UTF-8 in a file with an invalid value raised UnicodeDecodeError in place of the
    message; a saved config that is not UTF-8 or nests too deep did the same (or RecursionError)."""
    path = tmp_path / "latin1.py"
    path.write_bytes(b"# caf\xe9\nfrom experiments import tiny_dapo\n"
                     b"EXPERIMENT = tiny_dapo.EXPERIMENT.replace(rollout=dict(group_size=1))\n")
    with pytest.raises(ExperimentError, match="rollout.group_size"):
        load(str(path))
    for name, data in [("bad.json", b"\xff"), ("deep.json", b"[" * 100_000 + b"]" * 100_000)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ExperimentError, match=name):
            load(str(tmp_path / name))


def test_seeds_beyond_what_jax_and_numpy_take_are_refused():
    with pytest.raises(ExperimentError, match=r"seed: must be in \[0, 2\*\*31\)"):
        load("tiny_dapo", ["seed=99999999999999999999"])
