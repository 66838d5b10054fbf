"""Launch real SGLang on a GPU machine: `python -m rl.serve --engine sglang --model DIR ...`.

One `python -m sglang.launch_server` per server (tensor parallel --tp, SGLang's own data parallel --dp);
with --servers N > 1, the servers listen on PORT+1..PORT+N, each on its own GPUs, behind
`python -m sglang_router.launch_router` on PORT. A --context-length above the checkpoint's
max_position_embeddings adds the YaRN override (factor = asked / native). --dry-run prints the commands.
Everything after `--` is passed to every launch_server unchanged.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rl.cli import HelpFormatter

INSTALL_HINT = "install it with `pip install 'coderl[sglang]'` on a GPU machine"


@dataclass(frozen=True)
class LaunchPlan:
    servers: list[list[str]]  # one launch_server argv per server
    worker_urls: list[str]  # RolloutClient's sync_urls
    router: list[str] | None  # the router's argv, with several servers
    url: str  # what clients talk to


class LaunchError(ValueError):
    """A launch that cannot work: names the file or flag at fault."""


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"{path}: not found (--model must be a Hugging Face model folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LaunchError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(config, dict):
        raise LaunchError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    return config


def yarn_override(config: dict, context_length: int, source: str = "config.json") -> dict | None:
    """SGLang's --json-model-override-args for serving `context_length` tokens, or None when the checkpoint
    already covers it. YaRN's original length is the checkpoint's own (its original_max_position_embeddings
    when it is already YaRN-scaled); max_position_embeddings is raised too so SGLang accepts the length."""
    native = config.get("max_position_embeddings")
    if not isinstance(native, int) or isinstance(native, bool) or native <= 0:
        raise LaunchError(f"{source}: max_position_embeddings must be a positive integer, got {native!r}")
    if context_length <= native:
        return None
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(scaling, dict):
        raise LaunchError(f"{source}: rope_scaling must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "yarn":
        base = scaling.get("original_max_position_embeddings") or native
    elif kind in (None, "default"):
        base = native
    else:
        raise LaunchError(f"{source}: cannot extend the context with YaRN over rope_scaling type {kind!r}")
    return {"rope_scaling": {"rope_type": "yarn", "factor": context_length / base,
                             "original_max_position_embeddings": base},
            "max_position_embeddings": context_length}


def build_plan(args: argparse.Namespace) -> LaunchPlan:
    """The commands to run for parsed arguments (pure: reads only the model's config.json)."""
    model = Path(args.model)
    config = read_config(model)
    context = args.context_length
    override = yarn_override(config, context, str(model / "config.json")) if context else None
    several = args.servers > 1
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ports = [args.port + 1 + i for i in range(args.servers)] if several else [args.port]
    servers = []
    for i, port in enumerate(ports):
        argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model), "--host", args.host,
                "--port", str(port), "--tp-size", str(args.tp), "--dp-size", str(args.dp),
                "--base-gpu-id", str(i * args.tp * args.dp), "--mem-fraction-static", str(args.mem_fraction)]
        if context:
            argv += ["--context-length", str(context)]
        if override:
            argv += ["--json-model-override-args", json.dumps(override, separators=(",", ":"))]
        if args.weight_version is not None:
            argv += ["--weight-version", args.weight_version]
        if args.api_key:
            argv += ["--api-key", args.api_key]
        servers.append(argv + list(args.sglang_args))
    workers = [f"http://{local}:{p}" for p in ports]
    router = None
    if several:
        router = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *workers,
                  "--host", args.host, "--port", str(args.port), "--policy", args.router_policy]
    return LaunchPlan(servers, workers, router, f"http://{local}:{args.port}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl.serve --engine sglang", description=__doc__.split("\n\n")[0],
                                epilog="Example: python -m rl.serve --engine sglang --model ckpt/step_100 --tp 2 "
                                       "--servers 4 --context-length 81920 --dry-run",
                                formatter_class=HelpFormatter)
    p.add_argument("--engine", choices=["sglang"], default="sglang", help=argparse.SUPPRESS)
    p.add_argument("--model", required=True, help="Hugging Face model folder (config.json, safetensors, tokenizer)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000, help="the port clients use (the router's with --servers > 1)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs per server")
    p.add_argument("--dp", type=int, default=1, help="SGLang data-parallel replicas inside each server")
    p.add_argument("--servers", type=int, default=1, help="independent servers behind one sglang_router")
    p.add_argument("--context-length", type=int, default=None,
                   help="tokens per sequence; above the checkpoint's max_position_embeddings adds YaRN "
                        "(default: the checkpoint's)")
    p.add_argument("--mem-fraction", type=float, default=0.8, help="SGLang --mem-fraction-static")
    p.add_argument("--weight-version", default=None, help="initial weight_version reported in answers")
    p.add_argument("--api-key", default=None, help="require this bearer key (RolloutClient api_key)")
    p.add_argument("--router-policy", default="cache_aware",
                   help="sglang_router policy; cache_aware keeps a group's prompt on one server's prefix cache")
    p.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds to wait for /health_generate")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("sglang_args", nargs=argparse.REMAINDER,
                   help="after `--`: extra flags for every sglang.launch_server")
    args = p.parse_args(argv)
    if args.sglang_args[:1] == ["--"]:
        args.sglang_args = args.sglang_args[1:]
    elif args.sglang_args:
        p.error(f"unrecognized arguments: {' '.join(args.sglang_args)} (put SGLang's own flags after `--`)")
    for name in ("tp", "dp", "servers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.context_length is not None and args.context_length < 1:
        p.error(f"--context-length must be >= 1, got {args.context_length}")
    if not 0 < args.mem_fraction < 1:
        p.error(f"--mem-fraction must be in (0, 1), got {args.mem_fraction}")
    if not 0 < args.port < 65536 - args.servers:
        p.error(f"--port {args.port} leaves no room for {args.servers} server port(s)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for argv in plan.servers + ([plan.router] if plan.router else []):
            print(shlex.join(argv))
        return 0
    needed = ["sglang"] + (["sglang_router"] if plan.router else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: {', '.join(missing)} not installed: real SGLang runs on GPU machines; {INSTALL_HINT} "
              "(--dry-run prints the commands; `python -m rl.serve --model DIR` serves on CPU)", file=sys.stderr)
        return 2
    return _run(plan, args.startup_timeout, args.api_key)


def _run(plan: LaunchPlan, startup_timeout: float, api_key: str | None) -> int:
    """Start the servers, then the router once they are healthy; stop everything when one exits."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + startup_timeout

    def start(commands: list[list[str]], urls: list[str]) -> None:
        for argv in commands:
            print(f"starting: {shlex.join(argv)}", flush=True)
            procs.append(subprocess.Popen(argv))
        _wait_started(procs, urls, deadline, api_key)

    try:
        start(plan.servers, plan.worker_urls)
        if plan.router:
            start([plan.router], [plan.url])
        print(f"ready: {plan.url} (servers: {' '.join(plan.worker_urls)})", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1.0)
        exited = next(p for p in procs if p.returncode is not None)
        print(f"error: {shlex.join(exited.args[:3])} exited with code {exited.returncode}; stopping the rest",
              file=sys.stderr)
        return exited.returncode or 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_started(procs: list[subprocess.Popen], urls: list[str], deadline: float, api_key: str | None) -> None:
    """Poll /health_generate until every URL answers, failing fast when a process dies while loading."""
    from rl.rollout.client import wait_healthy

    while True:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise SystemExit(f"error: {shlex.join(dead[0].args[:3])} exited with code {dead[0].returncode} "
                             "during startup")
        try:
            asyncio.run(wait_healthy(urls, timeout=10.0, api_key=api_key))
            return
        except TimeoutError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
