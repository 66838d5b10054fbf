"""rl.plan: topology names, the abstract batch against a real pack, the arithmetic against a real init
and a compiled CPU mesh, and TPU compiles whose memory responds to micro-batches and remat."""
import math
import subprocess
import sys

import jax
import numpy as np
import pytest

import models
from models.weights import weight_table
from rl import packing
from rl.experiment import Experiment, load
from rl.plan import arith, topology
from rl.plan.compile import batch_shape, model_config
from rl.plan.search import micro_batch_ladder, plan

# Small layers, rows long enough that activations outweigh the fixed temporaries, and 4 of them: with
# one, remat none and full both hold that one layer's intermediates while its backward runs.
CFG = models.ModelConfig(arch="qwen3", vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=4,
                         num_heads=2, num_kv_heads=1, head_dim=64, dtype="bfloat16", attention="blockwise",
                         attention_block=128)


def small_experiment(micro_batches=1, remat="full") -> Experiment:
    return Experiment().replace(
        name="small", model=dict(path="unused", remat=remat, attention="blockwise"),
        batch=dict(prompts_per_step=4, micro_batches=micro_batches), rollout=dict(group_size=4, max_response_tokens=896),
        data=dict(max_prompt_tokens=128))


# ---- topologies ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, chips, shape", [("v5p-8", 4, "2x2x1"), ("v5p-16", 8, "2x2x2"), ("v5p-32", 16, "2x2x4"),
                                                ("v6e-8", 8, "2x4"), ("v6e-16", 16, "4x4"), ("v5p:2x4x4", 32, "2x4x4")])
def test_topology_names(name, chips, shape):
    t = topology.parse(name)
    assert (t.chips, t.shape, t.estimate) == (chips, shape, False)


def test_cpu_topology_is_an_estimate_with_the_given_memory():
    t = topology.parse("cpu:8", hbm_gb=141)
    assert t.estimate and t.chips == 8 and t.chip.hbm_bytes == 141 * 10**9
    assert topology.bigger(t).chips == 16 and "CPU-backend estimate" in t.label


@pytest.mark.parametrize("bad, message", [
    ("v5p-7", "TensorCores"), ("tpu-8", "unknown topology"), ("cpu:x", "unknown topology"), ("v6e-12", "v6e:2x4"),
    # each was a traceback from JAX or libtpu, or (cpu:99999999) a process killed for memory
    ("cpu:0", "1 to 256"), ("cpu:99999999", "1 to 256"), ("v5p:0x2x2", "3 sizes of at least 1"),
    ("v5p:2x2x1x1", "3 sizes"), ("v6e:2x2x2", "2 sizes"), ("v5p-2", "smallest v5p slice"),
    ("v5p-\uff18", "unknown topology"), ("cpu:\u0668", "unknown topology")])  # non-ASCII digits
def test_bad_topology_names_say_what_is_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        topology.parse(bad)


# ---- the abstract batch is what packing.pack builds at full length -------------------------------
@pytest.mark.parametrize("micro, pack", [(1, True), (2, True), (2, False)])
def test_batch_shape_matches_a_real_pack_of_full_length_rollouts(micro, pack):
    exp = small_experiment(micro).replace(batch=dict(pack=pack))
    n = exp.batch.prompts_per_step * exp.rollout.group_size
    samples = [packing.Sample([1] * 128, [2] * 896, [0.0] * 896, 1.0) for _ in range(n)]
    real = packing.pack(samples, micro_batches=micro, pack=pack, shards=4)
    assert batch_shape(exp, 4).__dict__ == {**real.shape, "mini": 1, "micro": micro}


def test_micro_batch_ladder_halves_rows_per_device_down_to_one():
    exp, _ = load("nouscoder_14b_dapo_40k")  # 512 rollouts, 16 micro-batches: 8 rows per v5p-8 chip
    assert micro_batch_ladder(exp, 4) == [32, 64, 128]


def test_known_checkpoint_shapes_need_no_folder():
    cfg = model_config(load("deepcoder_14b_grpo_plus_32k")[0])
    assert (cfg.arch, cfg.num_layers, cfg.intermediate_size, cfg.vocab_size) == ("qwen2", 48, 13824, 152064)
    assert 14.7e9 < arith.param_count(cfg) < 14.8e9  # R1-Distill-Qwen-14B: 14.77B


# ---- the arithmetic against real arrays and a compiled CPU mesh ----------------------------------
def test_param_count_matches_the_initialised_params():
    params = jax.eval_shape(lambda key: models.init_params(CFG, key), jax.random.key(0))
    assert arith.param_count(CFG) == sum(x.size for x in jax.tree.leaves(params))


def test_remat_policies_order_the_saved_activations():
    saved = {r: arith.saved_per_token_layer(CFG, r) for r in ("full", "matmuls", "none")}
    assert saved["full"] == CFG.hidden_size * 2 < saved["matmuls"] < saved["none"]


def test_cpu_mesh_arguments_are_the_arithmetic_parameter_optimizer_and_batch_bytes():
    p = plan(small_experiment(), CFG, topology.parse("cpu:8"), logprobs=False,
             compiler_options={"xla_backend_optimization_level": 0})
    # Matrices split 8 ways over fsdp; the norm vectors (one "norm" axis) stay whole on every device.
    norms = sum(math.prod(w.shape) * (CFG.num_layers if w.stacked else 1) for w in weight_table(CFG)
                if w.axes == ("norm",)) * 4
    assert p.params == (arith.param_bytes(CFG) - norms) / 8 + norms
    # The trainer's optimizer state: Adam's two moments sharded like the params, plus its counters.
    assert 2 * p.params <= p.optimizer <= 2 * p.params + 64, (p.optimizer, p.params)
    scalars = p.update.arguments - p.params - p.optimizer - p.batch  # step, rng
    assert 0 <= scalars <= 64, scalars


# ---- TPU targets: compile-only devices from libtpu -----------------------------------------------
@pytest.mark.skipif(bool(topology.libtpu_missing()), reason=topology.libtpu_missing() or "libtpu present")
def test_tpu_memory_responds_to_micro_batches_and_remat():
    """One test, three compiles (~15 s each on an idle core): xdist keeps them in one worker."""
    v5p = topology.parse("v5p-8")
    full, four, none = (plan(small_experiment(micro, remat), CFG, v5p, logprobs=False)
                        for micro, remat in [(1, "full"), (4, "full"), (1, "none")])
    assert full.topology.chips == 4 and full.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert full.tokens_per_device == 4 * 1024 and four.tokens_per_device == 1024  # 16 rows of 1,024 tokens
    # The state is updated in place; TPU tiles pad this model's small dims, so it takes a little more.
    assert full.fits and full.update.aliased >= full.params + full.optimizer
    assert four.update.temporaries < 0.6 * full.update.temporaries
    assert none.update.temporaries > 1.3 * full.update.temporaries
    assert np.isclose(none.update.arguments, full.update.arguments)


# ---- the command -------------------------------------------------------------------------------
def test_command_prints_the_table_and_writes_markdown(tmp_path, config_only_model):
    """`python -m rl.plan` end to end in a fresh process (it sets the JAX platform and device count
    before jax starts): a fitting tiny plan on a CPU mesh, and a clear refusal of a bad topology."""
    model = config_only_model
    out = tmp_path / "plan.md"
    run = subprocess.run([sys.executable, "-m", "rl.plan", "tiny_dapo", "--topology", "cpu:4", "--set",
                          f"model.path={model}", "--no-search", "--no-logprobs", "--markdown", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith("| tiny_dapo | cpu:4 |"))
    assert "fits" in row and "does not fit" not in row
    assert "| peak |" in run.stdout and row in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "rl.plan", "tiny_dapo", "--topology", "v9-8"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown topology 'v9-8'" in bad.stderr
    mesh = subprocess.run([sys.executable, "-m", "rl.plan", "tiny_dapo", "--topology", "cpu:4", "--set",
                           f"model.path={model}", "--set", "mesh.tensor=3"], capture_output=True, text=True, timeout=120)
    assert mesh.returncode == 2 and "rl.plan: cpu:4: " in mesh.stderr and "does not fit 4 devices" in mesh.stderr
    assert "Traceback" not in mesh.stderr


@pytest.mark.parametrize("argv, message", [(["--hbm", "inf"], "--hbm: inf"), (["--peak", "0"], "--peak: 0"),
                                           (["--markdown", "."], "is a directory")])
def test_bad_arguments_are_refused_before_the_compile(argv, message, capsys):
    """--hbm inf / --peak inf crashed after minutes of compiling; so did --markdown DIR."""
    from rl.plan.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["tiny_dapo", *argv])
    assert message in capsys.readouterr().err
