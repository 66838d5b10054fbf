"""python -m rl.tiny: build the tiny warm-started model, or regenerate the shipped problem set.

    python -m rl.tiny build --out runs/tiny/model --seed 0
    python -m rl.tiny problems --out rl/assets/tiny
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.cli import HelpFormatter, folder
from rl.tiny.build import BuildSettings, build
from rl.tiny.tasks import ASSETS, HELDOUT_FILE, TRAIN_FILE, make_splits, write_jsonl


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rl.tiny", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    defaults = BuildSettings()
    b = sub.add_parser("build", help="tokenizer + tiny Qwen3 + supervised warm start -> a Hugging Face folder",
                       formatter_class=HelpFormatter)
    b.add_argument("--out", type=folder, required=True, help="model folder to write")
    b.add_argument("--seed", type=int, default=0, help="seeds the weights and the minibatch order")
    b.add_argument("--train", type=Path, default=TRAIN_FILE, help="training problems (.jsonl)")
    b.add_argument("--steps", type=int, default=defaults.steps, help="warm-start minibatches")
    b.add_argument("--batch-size", type=int, default=defaults.batch_size)
    b.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    b.add_argument("--layers", type=int, default=defaults.layers)
    g = sub.add_parser("problems", help="regenerate the shipped train / held-out problem files",
                       formatter_class=HelpFormatter)
    g.add_argument("--out", type=folder, default=ASSETS, help="folder for train.jsonl and heldout.jsonl")
    g.add_argument("--seed", type=int, default=0, help="seeds the split and the tests")
    args = p.parse_args(argv)
    if args.command == "build":
        for name, least in (("steps", 2), ("batch_size", 1), ("layers", 1)):  # 1 step: all warmup, no decay
            if getattr(args, name) < least:
                p.error(f"--{name.replace('_', '-')} must be at least {least}")
        if not 0 < args.lr < float("inf"):
            p.error(f"--lr must be a positive finite number, got {args.lr}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "problems":
            train, heldout = make_splits(args.seed)
            write_jsonl(args.out / TRAIN_FILE.name, train)
            write_jsonl(args.out / HELDOUT_FILE.name, heldout)
            print(f"wrote {len(train)} training and {len(heldout)} held-out problems to {args.out}")
        else:
            build(args.out, args.seed, BuildSettings(args.steps, args.batch_size, args.lr, args.layers), args.train)
    except (OSError, ValueError) as e:
        print(f"python -m rl.tiny {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
