"""Serve a Hugging Face model folder over SGLang's HTTP API.

    python -m rl.serve --model DIR [--host 127.0.0.1] [--port 30000]          # the embedded JAX server
    python -m rl.serve --engine sglang --model DIR ... [--dry-run]             # real SGLang (GPU machines)

The embedded server speaks SGLang's native API (/generate, /health_generate, /update_weights_from_disk,
...) and OpenAI's /v1, with continuous batching on the JAX sampler; see docs/serving.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

from rl.cli import HelpFormatter, number
from rl.hugepages import reexec_with_huge_pages

ENGINES = ("embedded", "sglang")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:  # uvicorn would bind port % 65536 and print the one asked
        raise argparse.ArgumentTypeError(f"{port}: a port is 0-65535")
    return port


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rl.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="--engine sglang takes its own options: "
                                       "python -m rl.serve --engine sglang --help")
    p.add_argument("--engine", choices=ENGINES, default="embedded",
                   help="embedded: coderl's JAX server (CPU or GPU); sglang: launch real SGLang")
    p.add_argument("--model", "--model-path", dest="model", required=True,
                   help="Hugging Face model folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=30000)
    p.add_argument("--fd", type=number(int, 0, strict=False), default=None,
                   help="serve on this inherited, already listening socket instead of binding --host/--port "
                        "(rl.rollout.EmbeddedServer passes one, so that no other process can take its port)")
    p.add_argument("--max-running-requests", type=number(int), default=32,
                   help="decode slots: requests generated together (continuous batching)")
    p.add_argument("--context-length", type=number(int), default=None,
                   help="longest prompt + completion (default: the config's max_position_embeddings)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights and compute dtype (auto: the checkpoint's)")
    p.add_argument("--served-model-name", default=None, help="the model id /v1/models reports (default: --model)")
    p.add_argument("--weight-version", default="default", help="weight_version reported until the first update")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--skip-warmup", action="store_true", help="do not compile the common programs before serving")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument("--engine", choices=ENGINES, default="embedded")
    known, rest = which.parse_known_args(argv)
    if known.engine == "sglang":
        from rl.rollout.sglang import main as sglang_main
        return sglang_main(rest)
    args = parse_args(argv)
    from rl.rollout.embedded import die_with_parent
    die_with_parent()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rl.rollout.server import serve_embedded
    return serve_embedded(args)


if __name__ == "__main__":
    reexec_with_huge_pages()
    sys.exit(main())
