"""`python -m rl.train EXPERIMENT [--set key.path=value ...] [--run-dir DIR] [--dry-run]`

Loads an experiment file (a path, a bare name from experiments/, or a run's saved config.json),
applies the overrides and validates it. --dry-run prints the resolved config as JSON and stops;
otherwise the config is saved as config.json in the run directory and the RL loop runs there.

Many hosts: run the same command on every host, one process each, with --coordinator HOST:PORT
--num-processes N --process-id I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or
--distributed where JAX detects the cluster (Cloud TPU pod slice, SLURM). The mesh spans every host's
devices; process 0 samples, grades, logs and exports, the others follow its updates.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rl.hugepages import reexec_with_huge_pages

if __name__ == "__main__":  # before jax loads below: glibc reads its tunables only at start-up
    reexec_with_huge_pages()

from rl.cli import folder  # noqa: E402
from rl.experiment import Experiment, ExperimentError, available, check_resources, load, validate  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rl.train", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"experiments/: {', '.join(available())}")
    parser.add_argument("experiment", help="a path to an experiment .py or a saved config.json, or a bare "
                                           "name from experiments/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one setting, e.g. --set rollout.group_size=16 (repeatable); lists are "
                             "comma-separated, none clears an optional value")
    parser.add_argument("--run-dir", type=folder, help="where the run writes (default: runs/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config as JSON")
    parser.add_argument("--require-improvement", action="store_true",
                        help="exit 3 unless the last held-out pass@1 is above the one before RL (the main job's check)")
    hosts = parser.add_argument_group("many processes (one per host; see docs/scale.md)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (default: $JAX_COORDINATOR_ADDRESS)")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (default: $JAX_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (default: $JAX_PROCESS_ID)")
    hosts.add_argument("--distributed", action="store_true",
                       help="let JAX detect the processes (Cloud TPU pod slice, SLURM, Open MPI)")
    return parser.parse_args(argv)


def save_config(exp: Experiment, run_dir: Path) -> Path:
    """Writes run_dir/config.json atomically. A run directory that already holds a different
    config is refused (resuming keeps its config; a changed config is a new run)."""
    path = run_dir / "config.json"
    try:
        return _save_config(exp, run_dir, path)
    except OSError as e:  # a run directory that is a file, a config.json that is a folder, a name too long
        raise ExperimentError(f"run directory {run_dir}: {type(e).__name__}: {e.strerror or e}; "
                              "choose another --run-dir") from None


def _save_config(exp: Experiment, run_dir: Path, path: Path) -> Path:
    if path.exists():
        try:
            old = Experiment.from_file(path)
        except ExperimentError as e:
            raise ExperimentError(f"{path} exists and is not a readable config ({e}); "
                                  f"move it away or choose another --run-dir") from None
        if old != exp:
            new, prev = exp.to_dict(), old.to_dict()
            changed = [f"{s}.{k}" for s in new if isinstance(new[s], dict)
                       for k in new[s] if new[s][k] != prev[s].get(k)]
            changed += [k for k in new if not isinstance(new[k], dict) and new[k] != prev[k]]
            raise ExperimentError(f"{path} holds a different config (changed: {', '.join(changed)}); "
                                  f"resume with the same settings or start a new run with --run-dir")
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(exp.to_json())
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rl import distributed  # imports jax: not for --help
    try:  # before any other JAX call
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax
    errors = []
    try:
        exp, source = load(args.experiment, args.overrides)
        mesh = exp.mesh
        if args.dry_run:
            if -1 not in (mesh.data, mesh.fsdp, mesh.tensor):  # a fully given mesh must fit this machine
                validate(exp, source, devices=jax.device_count())
        else:
            validate(exp, source, devices=jax.device_count())
            check_resources(exp, source, data_files=distributed.is_main())
            run_dir = args.run_dir or Path("runs") / exp.name
            if distributed.is_main():
                save_config(exp, run_dir)
    except ExperimentError as e:
        errors = e.errors
    # Every process goes on, or none does: one left alone would wait in a collective until a timeout.
    errors = distributed.agree(errors)
    if errors:
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(exp.to_json(), end="")
        return 0
    from rl import loop
    try:
        summary = loop.run(exp, run_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted; re-run the same command to resume {run_dir} from its last checkpoint",
              file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        # What the run met in its inputs (an unreadable checkpoint or model folder, an empty problem
        # set, a busy run directory), named by the message; CODERL_TRACEBACK=1 shows where.
        if os.environ.get("CODERL_TRACEBACK"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if summary is None:  # not process 0: it reports
        return 0
    print(report(summary))
    if args.require_improvement and not _improved(summary):
        print("error: held-out pass@1 did not improve over the run", file=sys.stderr)
        return 3
    return 0


def report(summary: dict) -> str:
    """The held-out evaluations of the run as a table, and where everything is."""
    lines = ["", "held-out pass@1", f"  {'step':>6}  {'pass@1':>7}"]
    lines += [f"  {step:>6}  {value:>7.3f}" for step, value in summary["evals"]]
    if summary["before"] is not None:
        lines.append(f"before RL {summary['before']:.3f} -> after {summary['after']:.3f} "
                     f"(best {summary['best'].get('pass@1', float('nan')):.3f} at step {summary['best'].get('step')})")
    lines.append(f"run directory: {summary['run_dir']} (metrics.jsonl, tensorboard/, rollouts/, eval/, "
                 f"checkpoints/, export/, best_model/)")
    return "\n".join(lines)


def _improved(summary: dict) -> bool:
    return summary["before"] is not None and summary["after"] is not None and summary["after"] > summary["before"]


if __name__ == "__main__":
    sys.exit(main())
