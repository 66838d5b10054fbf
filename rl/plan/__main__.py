"""`python -m rl.plan EXPERIMENT [EXPERIMENT ...] [--topology v5p-8 ...] [--set key.path=value ...]`

Compiles each experiment's real policy update (rl.trainer.Trainer's jitted function) and its logprob
pass ahead of time for each topology, with abstract params and an abstract packed batch at the full
prompt + response length: nothing is allocated, no accelerator is needed. Prints per device what the
arguments (params, optimizer state, batch), temporaries and outputs take against the chip's HBM,
whether it fits and by how much, FLOPs per step and the step time at --mfu.

When the experiment as written does not fit, it searches: remat full, then more micro-batches (fewer
rows per device), then bigger slices, compiling each candidate until one fits.

Topologies: v5p-N / v6e-N (Cloud TPU names; v5p counts TensorCores, 2 per chip), v5p:2x2x1 / v6e:2x4
(libtpu shapes; TPU targets need libtpu), cpu:N (N GPUs, e.g. 8 x 80 GB, estimated with the CPU
compiler on N simulated devices; --hbm and --peak set the GPU). A 14B update takes minutes to compile.

examples:
  python -m rl.plan nouscoder_14b_dapo_40k --topology v5p-8
  python -m rl.plan deepcoder_14b_grpo_plus_32k --topology v6e-8 --topology cpu:8 --set batch.micro_batches=64
  python -m rl.plan nouscoder_14b_gspo_40k --topology cpu:8 --hbm 141 --peak 989 --no-search
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from rl.cli import number, out_file
from rl.plan.topology import MAX_CPU_DEVICES

SEARCH_DOUBLINGS = 4


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("\n\n", 1)[1]
    p = argparse.ArgumentParser(prog="python -m rl.plan", description=doc.split("\nexamples:")[0],
                                epilog="examples:" + doc.split("\nexamples:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                   help="a path to an experiment .py or a bare name from experiments/")
    p.add_argument("--topology", action="append", default=[], metavar="NAME",
                   help="v5p-8, v6e-8, v5p:2x2x2, cpu:8, ... (repeatable; default v5p-8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one experiment setting (repeatable), as rl.train does")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time (default 0.4)")
    p.add_argument("--hbm", type=number(float), default=None, metavar="GB",
                   help="memory per device in GB (default: the chip's; cpu:N: 80, an H100 80 GB)")
    p.add_argument("--peak", type=number(float), default=None, metavar="TFLOPS",
                   help="dense bf16 peak per device (default: the chip's; cpu:N: 989, an H100 SXM)")
    p.add_argument("--no-search", action="store_true", help="compile the experiment as written only")
    p.add_argument("--no-logprobs", action="store_true", help="skip the logprob pass's compile")
    p.add_argument("--slope", action="store_true",
                   help="also measure temporaries per token per layer: two more compiles, one row per device at "
                        "the full and at half the response length, against the arithmetic")
    p.add_argument("--layers", type=number(int), default=None,
                   help="override the model's depth: quick looks only (a real plan keeps it)")
    p.add_argument("--markdown", type=out_file, metavar="FILE", help="also write the tables to FILE")
    args = p.parse_args(argv)
    args.topology = args.topology or ["v5p-8"]
    if not 0 < args.mfu <= 1:
        p.error(f"--mfu {args.mfu}: must be in (0, 1]")
    return args


def _prepare_jax(topologies: list[str]) -> None:
    """Before jax starts: the CPU platform (this only compiles; TPU targets come from libtpu's
    compile-only devices), and enough simulated CPU devices for the largest cpu:N the search reaches."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    counts = [int(m[1]) for t in topologies if (m := re.fullmatch(r"\s*(?:cpu|gpu):(\d+)\s*", t, re.ASCII))]
    counts = [n for n in counts if 1 <= n <= MAX_CPU_DEVICES]  # others are refused with a message
    flags = os.environ.get("XLA_FLAGS", "")
    if counts and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(counts) << SEARCH_DOUBLINGS}"


def main(argv=None) -> int:
    args = parse_args(argv)
    _prepare_jax(args.topology)
    from rl.experiment import ExperimentError, load, validate
    from rl.plan import report, topology
    from rl.plan.compile import model_config
    from rl.plan.search import plan, search, temporaries_slope

    try:
        topos = [topology.parse(t, hbm_gb=args.hbm, peak_tflops=args.peak) for t in args.topology]
        loaded = [load(spec, args.overrides) for spec in args.experiments]
        configs = [model_config(exp, args.layers) for exp, _ in loaded]
    except (ValueError, ExperimentError) as e:
        print(f"rl.plan: {e}", file=sys.stderr)
        return 2
    for t in topos:
        if not t.estimate and topology.libtpu_missing():
            print(f"rl.plan: {t.name}: {topology.libtpu_missing()}", file=sys.stderr)
            return 2
        try:
            for exp, source in loaded:  # the mesh against the slice's devices
                validate(exp, source, devices=t.chips)
            topology.devices(t)
        except ExperimentError as e:
            print("\n".join(f"rl.plan: {t.name}: {line}" for line in e.errors), file=sys.stderr)
            return 2
        except RuntimeError as e:  # libtpu refusing the shape (JaxRuntimeError), too few CPU devices
            print(f"rl.plan: {t.name}: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2

    out, summary = [], []
    for (exp, _), cfg in zip(loaded, configs):
        for topo in topos:
            print(f"{exp.name} on {topo.label}:", flush=True)
            kw = dict(logprobs=not args.no_logprobs)
            log = lambda line: print(line, flush=True)  # noqa: E731
            plans = ([plan(exp, cfg, topo, **kw)] if args.no_search else
                     search(exp, cfg, topo, max_doublings=SEARCH_DOUBLINGS, log=log, **kw))
            shown, start = [plans[0]] + ([plans[-1]] if len(plans) > 1 else []), len(out)
            for p in shown:
                out.append(report.detail(p, args.mfu))
                summary.append(report.summary_row(p, args.mfu))
            if len(plans) > 1 and not plans[-1].fits:
                out.append(f"Nothing tried fits: {len(plans)} compiles, the last {report.verdict(plans[-1])}.\n")
            if args.slope:
                compiled, expected, _, _ = temporaries_slope(exp.replace(model=dict(remat=plans[-1].remat)), cfg, topo)
                out.append(f"Temporaries per token per layer ({plans[-1].remat} remat, one row per device, "
                           f"full vs half response length): {compiled / 1024:.1f} KiB compiled, {expected / 1024:.1f} "
                           f"KiB arithmetic ({compiled / expected:.2f}x).\n")
            print("\n".join(out[start:]), flush=True)
    text = "\n".join(out) + "\n## Summary\n\n" + report.SUMMARY_HEAD + "".join(summary)
    print("## Summary\n\n" + report.SUMMARY_HEAD + "".join(summary))
    if args.layers:
        print(f"(--layers {args.layers}: not the real model's depth)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
