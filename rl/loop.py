"""The RL loop, top to bottom as the data flows:

problems -> prompts -> rollouts (SGLang servers) -> verdicts (sandbox, as each completion arrives)
-> rewards -> advantages -> update (sharded, jitted) -> weights back to the servers.

Each arrow is one call into the room that owns it: rl.data, rl.rollout, rl.reward / sandbox,
rl.losses, rl.trainer. With rollout.max_staleness >= 1 the next batch is generated while this one
trains (one-step-off, as slime's train_async), and its weights are pushed once both are done.

With several processes (rl.distributed) process 0 runs this loop; the others hold their share of the
train state and make the trainer's calls with it (rl.distributed.Lockstep).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import shutil
import time
import zlib
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import models
from rl import data, distributed, evaluation, groups, metrics, packing
from rl.checkpoint import Checkpointer, load_params
from rl.experiment import Experiment, model_config
from rl.losses import compute_advantages
from rl.reward import RewardSettings
from rl.rollout.client import RolloutClient, wait_healthy
from rl.rollout.embedded import EmbeddedServer
from rl.rollout.records import sample_seed
from rl.stream import ProblemStream
from rl.trainer import Trainer
from sandbox import SandboxPool


def run(exp: Experiment, run_dir: str | Path) -> dict | None:
    """Train until exp.schedule.steps, resuming from the run directory's last complete checkpoint.
    Process 0 returns the run's summary; other processes follow its trainer calls and return None."""
    if not distributed.is_main():
        return _follow(exp, Path(run_dir))
    return asyncio.run(_run(exp, Path(run_dir)))


async def _run(exp: Experiment, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = _lock_run_dir(run_dir)  # released as the run ends (below), or by the kernel if it dies
    say = _Console(run_dir)
    # The sharded train state, restored from the last complete checkpoint when there is one. Every
    # process loads it; the others then make this one's trainer calls with it (rl.distributed.Lockstep).
    trainer, ckpt, state, extra = _train_state(exp, run_dir)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(busy.close)
        stack.callback(ckpt.close)  # also on errors: the last asynchronous save lands whole
        lock = stack.enter_context(distributed.Lockstep(trainer, ckpt, run_dir / "export"))  # exit releases them
        # Problems -> prompts, rendered once with the model folder's own chat template.
        tokenizer = data.load_tokenizer(exp.model.path)
        held_out = data.prepare(exp.data, tokenizer, "eval", progress=True)
        train = data.prepare(exp.data, tokenizer, "train", exclude=[r for r, _ in held_out.prompts], progress=True)
        (run_dir / "data.json").write_text(json.dumps({"train": train.report, "eval": held_out.report}, indent=1))
        say(f"problems: {len(train.prompts)} train, {len(held_out.prompts)} held out "
            f"(dropped: {_dropped(train.report)}); details in {run_dir / 'data.json'}")
        if exp.rollout.max_staleness >= 1 and exp.objective.tis_cap is None:
            say(f"note: rollout.max_staleness={exp.rollout.max_staleness} without objective.tis_cap: the ratio is "
                "taken against the weights before the update, not the ones that sampled, so nothing corrects "
                "for staleness")

        stream = ProblemStream(len(train.prompts), seed=exp.seed)
        if extra is not None:
            stream.restore(extra["data"])
            step, version, best = extra["step"], extra["weight_version"], extra.get("best") or {}
            say(f"resumed at step {step} from {ckpt.directory}")
        else:
            step, version, best = 0, 0, {}
        # Rows past the checkpoint are redone; starting fresh, so is the step-0 evaluation.
        logger = metrics.RunLogger(run_dir, resume_step=step if extra is not None else -1)
        stack.callback(logger.close)
        exports = lock.export_dir
        current = lock.export(state, version)

        settings = RewardSettings.from_experiment(exp)
        stop_ids = sorted({i for i in (tokenizer.eos_token_id, *_eos_ids(trainer.cfg)) if i is not None})
        # Servers: the experiment's SGLang servers, or the embedded one started on the latest export.
        if exp.rollout.servers:
            urls = list(exp.rollout.servers)
            await wait_healthy(urls, timeout=600)
        else:
            server = stack.enter_context(EmbeddedServer(current, log_path=run_dir / "server.log"))
            urls = [server.url]
            say(f"embedded server on {server.url} serving {current.name} (log: {run_dir / 'server.log'})")
        client = await stack.enter_async_context(RolloutClient(urls, max_concurrency=exp.rollout.max_concurrency))
        pool = stack.enter_context(SandboxPool(exp.sandbox.workers or None))
        # Servers may hold other weights (a crash, another run): push ours before the first rollout.
        await client.sync_weights(current, version)

        def sampler(problems, sampling, key):
            async def sample(p: int, index: int) -> groups.Rollout:
                record, prompt_ids = problems[p]
                return await groups.sample_and_grade(
                    client, pool, tokenizer, p, record, prompt_ids, key=f"{key}/{p}", index=index,
                    sampling=sampling, seed=sample_seed(zlib.crc32(f"{exp.seed}/{key}".encode()), index),
                    settings=settings)
            return sample

        async def held_out_eval(at: int) -> dict:
            # The weights after `at` updates at the response limit they last trained with: a stage that
            # starts at `at` has not trained them yet.
            sampling = dict(max_new_tokens=exp.rollout.max_response_tokens_at(max(at - 1, 0)), stop_token_ids=stop_ids,
                            temperature=exp.rollout.eval_temperature, top_p=exp.rollout.eval_top_p)
            t0 = time.perf_counter()
            result = await evaluation.evaluate(
                client, pool, tokenizer, held_out.prompts, n=exp.rollout.eval_n, ks=(1,), sampling=sampling,
                settings=settings, seed=exp.seed + at, out_dir=run_dir / "eval" / f"step_{at:06d}", progress=False)
            return {**evaluation.metrics(result, prefix="eval/"), "time/eval": time.perf_counter() - t0}

        def collect(at: int, train_version: int):
            """Rollouts for step `at`, to be trained on by weights `train_version` (the staleness bound)."""
            sampling = dict(max_new_tokens=exp.rollout.max_response_tokens_at(at), stop_token_ids=stop_ids,
                            temperature=exp.rollout.temperature, top_p=exp.rollout.top_p)
            return asyncio.ensure_future(groups.collect(
                stream.take, sampler(train.prompts, sampling, f"step{at}"),
                groups_needed=exp.batch.prompts_per_step, group_size=exp.rollout.group_size,
                dynamic=exp.rollout.dynamic_sampling, max_rounds=exp.rollout.max_refill_rounds,
                min_version=train_version - exp.rollout.max_staleness))

        if step == 0 and held_out.prompts:
            say("held-out evaluation before RL ...")
            row = logger.log(0, await held_out_eval(0))
            best = {"step": 0, "pass@1": row["eval/pass@1"]}
            say(f"held-out pass@1 before RL: {row['eval/pass@1']:.3f}")

        position = stream.position()  # a resume redraws from here: in-flight rollouts are not saved
        pending = collect(step, version) if step < exp.schedule.steps else None
        bar = tqdm(total=exp.schedule.steps, initial=step, desc=exp.name, unit="step", dynamic_ncols=True)
        while step < exp.schedule.steps:
            t_step = time.perf_counter()
            collected = await pending
            _save_rollouts(run_dir, step + 1, collected.sampled, train.prompts)
            position = stream.position()
            one_step_off = exp.rollout.max_staleness >= 1 and step + 1 < exp.schedule.steps
            if one_step_off:  # the next batch is generated with the current weights while this one trains
                pending = collect(step + 1, version + 1)
            # Rewards -> advantages -> the sharded update. A step where dynamic sampling kept no group
            # changes nothing (an empty AdamW step would still move the weights by momentum and decay).
            row = {**groups.summarize(collected.sampled), **collected.stats}
            t0 = time.perf_counter()
            if collected.groups:
                batch, batch_stats = _batch(exp, trainer, collected, version)
                state, update_metrics = await asyncio.to_thread(lock.update, state, batch)
                row.update(batch_stats, **_update_row(jax.device_get(update_metrics)))
                version += 1
            row["time/train"] = time.perf_counter() - t0
            step += 1
            if one_step_off:
                await asyncio.shield(pending)  # slime's order: finish the generation, then push weights
            if current.name != f"step_{version:06d}":
                # Weights back to the servers; old exports go only after every server confirmed.
                t0 = time.perf_counter()
                current = lock.export(state, version)
                await client.sync_weights(current, version)
                _prune_exports(exports, keep=current)
                row["time/sync"] = time.perf_counter() - t0
            elif off := await client.servers_off_version(version):
                # Restarted on other weights: every rollout it drew would be dropped as stale, step after step.
                say(f"{', '.join(off)} no longer serve{'s' if len(off) == 1 else ''} weight_version {version}: "
                    f"pushing {current.name} again")
                await client.sync_weights(current, version)
            if not one_step_off and step < exp.schedule.steps:
                pending = collect(step, version)
            row["weight_version"] = version
            if held_out.prompts and (_every(step, exp.schedule.eval_every) or step == exp.schedule.steps):
                row.update(await held_out_eval(step))
                if best.get("pass@1") is None or row["eval/pass@1"] > best["pass@1"]:
                    best = {"step": step, "pass@1": row["eval/pass@1"]}
                    _keep_best(run_dir, current, best)
            if _every(step, exp.schedule.checkpoint_every) or step == exp.schedule.steps:
                lock.save(state, {"step": step, "data": position, "weight_version": version, "best": best},
                          step=step)
            row["time/step"] = time.perf_counter() - t_step
            row["perf/tokens_per_s"] = row.get("perf/train_tokens", 0) / row["time/step"]
            row = logger.log(step, row)
            bar.update(1)
            bar.write(metrics.headline(row))
        bar.close()
    return _summary(logger.history, run_dir, best)


def _update_row(m: dict) -> dict:
    """The trainer's metrics under the names runs are compared by."""
    row = {f"loss/{k}": v for k, v in m.items() if k not in ("grad_norm", "lr")}
    return {**row, "optim/grad_norm": m.get("grad_norm"), "optim/lr": m.get("lr")}


def _save_rollouts(run_dir: Path, step: int, rollouts, problems, cap: int = 64) -> None:
    """A few of the step's completions with their verdicts, to read what the policy writes."""
    out = run_dir / "rollouts"
    out.mkdir(exist_ok=True)
    lines = [json.dumps(r.to_json(problems[r.problem][0])) + "\n" for r in rollouts[:cap]]
    (out / f"step_{step:06d}.jsonl").write_text("".join(lines))


def _batch(exp: Experiment, trainer: Trainer, collected: groups.Collected, version: int):
    """Advantages per group and the packed arrays of one update (the objective handles overlong).

    Groups missing after the refill cap are empty rows (no tokens), so the update keeps its shape."""
    rollouts = [r for g in collected.groups for r in g]
    n = exp.rollout.group_size
    a = exp.advantages
    rewards = np.array([r.reward for r in rollouts], np.float32)
    adv = np.asarray(compute_advantages(rewards, n, normalize_std=a.normalize_std, ddof=a.ddof, eps=a.eps))
    samples = [packing.Sample(r.sample.prompt_ids, r.sample.output_ids, r.sample.logprobs, float(adv_i),
                              r.truncated) for r, adv_i in zip(rollouts, adv)]
    samples += [packing.Sample([0], [], [], 0.0, False)] * (exp.batch.prompts_per_step * n - len(samples))
    staleness = [version - r.version for r in rollouts]
    return trainer.pack(samples), {"staleness/mean": float(np.mean(staleness)), "staleness/max": max(staleness),
                                   "perf/train_tokens": sum(len(r.sample.prompt_ids) + len(r.sample.output_ids)
                                                            for r in rollouts)}


def _follow(exp: Experiment, run_dir: Path) -> None:
    """Processes other than 0: the same train state, then process 0's trainer calls until it stops."""
    trainer, ckpt, state, _ = _train_state(exp, run_dir)
    try:
        distributed.Lockstep(trainer, ckpt, run_dir / "export").follow(state)
    finally:
        ckpt.close()


def _best_or_absent(value) -> bool:
    """{"step": ..., "pass@1": ...} or absent"""
    return value is None or isinstance(value, dict) and isinstance(value.get("pass@1", 0.0), (int, float))


# The loop's state in a checkpoint: one that does not hold it is skipped, as an unreadable one is.
EXTRA_FIELDS = {"step": int, "weight_version": int, "data": ProblemStream.is_position, "best": _best_or_absent}


def _train_state(exp: Experiment, run_dir: Path):
    """(trainer, checkpointer, train state, the loop's saved extra or None when starting fresh). Every
    process runs this: loading params and restoring checkpoints are collective."""
    mesh = models.make_mesh(exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor)
    cfg = model_config(exp)
    trainer = Trainer(exp, cfg, mesh)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=exp.schedule.keep_checkpoints)
    restored = ckpt.restore(trainer.abstract_state(), extra_fields=EXTRA_FIELDS)
    if not restored:
        return trainer, ckpt, trainer.init_state(_initial_params(exp, cfg, mesh)), None
    state, extra = restored
    if trainer.uses_reference:
        trainer.set_reference(_initial_params(exp, cfg, mesh))
    return trainer, ckpt, state, extra


class RunDirBusy(RuntimeError):
    pass


def _every(step: int, cadence: int) -> bool:
    """Whether a `cadence`-step event (schedule.eval_every, checkpoint_every) falls on `step`; 0: never."""
    return cadence > 0 and step % cadence == 0


def _lock_run_dir(run_dir: Path):
    """An exclusive lock on run_dir/.lock: two runs writing one directory interleave its metrics and
    checkpoints. The kernel drops it when the process ends, however it ends."""
    f = (run_dir / ".lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunDirBusy(f"{run_dir} is in use by another run (it holds {run_dir / '.lock'}); "
                         f"wait for it or choose another --run-dir") from None
    return f


def _initial_params(exp: Experiment, cfg, mesh):
    """The starting policy: schedule.init_from (an HF folder or a run's checkpoint), else model.path."""
    return load_params(exp.schedule.init_from or exp.model.path, cfg, mesh)


def _eos_ids(cfg) -> list[int]:
    value = json.loads(dict(cfg.hf_extra).get("eos_token_id", "null"))
    return value if isinstance(value, list) else [value]


def _prune_exports(exports: Path, keep: Path) -> None:
    for old in exports.glob("step_*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _keep_best(run_dir: Path, export: Path, best: dict) -> None:
    """The best export by held-out pass@1, an HF folder the next context stage can start from."""
    tmp = run_dir / ".best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    (tmp / "best.json").write_text(json.dumps(best))
    shutil.rmtree(run_dir / "best_model", ignore_errors=True)
    tmp.rename(run_dir / "best_model")


def _dropped(report: dict) -> str:
    counts = dict(report.get("filter", {}).get("dropped", {}))
    counts["prompt_too_long"] = report.get("prompt_too_long", 0)
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _summary(history: list[dict], run_dir: Path, best: dict) -> dict:
    evals = [(r["step"], r["eval/pass@1"]) for r in history if isinstance(r.get("eval/pass@1"), (int, float))]
    return {"run_dir": str(run_dir), "evals": evals, "best": best,
            "before": evals[0][1] if evals else None, "after": evals[-1][1] if evals else None}


class _Console:
    """Stage lines on the console, also kept in run_dir/log.txt."""

    def __init__(self, run_dir: Path):
        self.start, self.file = time.perf_counter(), run_dir / "log.txt"

    def __call__(self, text: str) -> None:
        line = f"[{time.perf_counter() - self.start:6.1f}s] {text}"
        tqdm.write(line)
        with self.file.open("a") as f:
            f.write(line + "\n")
