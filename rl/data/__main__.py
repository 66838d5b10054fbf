"""python -m rl.data FILE... : what a problem set holds after loading, filtering and rendering."""
from __future__ import annotations

import argparse
import json
import sys

from rl.cli import window_arg
from rl.experiment import DataSection

from .filters import WINDOWS
from .prepare import prepare, select
from .prompts import STYLES, load_tokenizer, prompt_messages
from .sources import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rl.data",
        description="Load problem files (LiveCodeBench, TACO, DeepCoder-Preview or sandbox JSON; "
                    ".json, .jsonl or .parquet), apply an experiment's data filters and print a "
                    "JSON report of what was kept and dropped. See docs/data.md.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="problem files")
    parser.add_argument("--window", default="", type=window_arg, metavar="START:END",
                        help=f"contest dates YYYY-MM-DD:YYYY-MM-DD, inclusive, or one of "
                             f"{', '.join(sorted(WINDOWS))} (default: all)")
    parser.add_argument("--difficulty", action="append", default=[], metavar="D",
                        help="keep this difficulty (repeatable; default: all)")
    parser.add_argument("--no-dedup", action="store_true", help="keep problems with the same text")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    parser.add_argument("--model", metavar="DIR",
                        help="model folder whose tokenizer and chat template render the prompts "
                             "(without it, prompts are not rendered nor their lengths checked)")
    parser.add_argument("--prompt", choices=STYLES, default="lcb",
                        help="lcb: system + user message; r1: one user message (default: lcb)")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N",
                        help="drop longer prompts (default: 2048)")
    parser.add_argument("--show", type=int, default=0, metavar="K",
                        help="also print the chat messages of the first K kept problems")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.show < 0:
        parser.error(f"--show: expected K >= 0, got {args.show}")
    progress = sys.stderr.isatty()
    try:
        data = DataSection(train=tuple(args.files), window=args.window,
                           difficulties=tuple(args.difficulty), dedup=not args.no_dedup,
                           prompt=args.prompt, max_prompt_tokens=args.max_prompt_tokens)
        if args.model:
            prepared = prepare(data, load_tokenizer(args.model), strict=args.strict, progress=progress)
            out, shown = prepared.report, [(rec, len(ids)) for rec, ids in prepared.prompts]
        else:
            kept, out = select(data, strict=args.strict, progress=progress)
            shown = [(rec, None) for rec in kept]
    except (DataError, ValueError, OSError) as e:
        print(f"python -m rl.data: error: {e}", file=sys.stderr)
        return 2
    if args.show:
        out["examples"] = [{"id": rec.id, "origin": rec.origin, "prompt_tokens": n,
                            "messages": prompt_messages(rec, args.prompt)}
                           for rec, n in shown[:args.show]]
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
