"""Evaluate a model on code problems as LiveCodeBench does, and compare two evaluations.

    python -m rl.evaluate --model DIR --problems FILE... [--window lcb_v5] [--n 16] [--k 1,8] [--out DIR]
    python -m rl.evaluate --server URL... --tokenizer DIR --problems FILE... [...]
    python -m rl.evaluate compare A B [--common]

--model serves the folder on this machine (the embedded JAX server, or real SGLang with --engine sglang);
--server uses running SGLang servers or a router. Problems are loaded, filtered and prompted as the RL
loop does (rl.data), graded by the sandbox as each completion arrives; see docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import warnings
from pathlib import Path

import httpx

from rl.cli import HelpFormatter, folder, number, printable, window_arg
from rl.hugepages import reexec_with_huge_pages

DEFAULT_CONCURRENCY = 256


_positive_int, _positive_float, _non_negative_float = number(int), number(float), number(float, 0, strict=False)
MAX_RESAMPLES = 10_000_000  # the bootstrap keeps one mean per resample: 80 MB here


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl.evaluate", description=__doc__.split("\n\n")[0],
                                epilog="Compare two results: python -m rl.evaluate compare A B --help",
                                formatter_class=HelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="Hugging Face model folder to serve here")
    where.add_argument("--server", nargs="+", metavar="URL", help="running SGLang servers or one router URL")
    p.add_argument("--tokenizer", type=Path, help="folder with the served model's tokenizer and chat template "
                                                  "(default: --model; required with --server)")
    p.add_argument("--engine", choices=("embedded", "sglang"), default="embedded",
                   help="with --model: coderl's JAX server, or real SGLang through `rl.serve --engine sglang`")
    p.add_argument("--max-running-requests", type=_positive_int, default=32, help="with --model: the server's decode slots")
    p.add_argument("--api-key", default=None, help="bearer key of the servers")
    p.add_argument("--wait", type=_positive_float, default=60.0, help="with --server: seconds to wait for the servers")
    data = p.add_argument_group("problems")
    data.add_argument("--problems", nargs="+", required=True, metavar="FILE",
                      help="problem files (.json, .jsonl, .parquet: LiveCodeBench, TACO, DeepCoder, sandbox rows)")
    data.add_argument("--window", default="", type=window_arg,
                      help="contest dates START:END (ISO, inclusive) or lcb_v5 / lcb_v6 (default: every problem)")
    data.add_argument("--difficulty", nargs="+", default=(), metavar="D", help="keep only these difficulties")
    data.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep problems with the same text")
    data.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    data.add_argument("--prompt", choices=("lcb", "r1"), default="lcb",
                      help="lcb: LiveCodeBench's system prompt; r1: everything in one user turn (R1 distills)")
    samp = p.add_argument_group("sampling")
    samp.add_argument("--n", type=int, default=16, help="completions per problem")
    samp.add_argument("--k", default="1,8", help="pass@k to report, comma-separated (each <= n)")
    samp.add_argument("--temperature", type=_non_negative_float, default=0.6)
    samp.add_argument("--top-p", type=float, default=0.95)
    samp.add_argument("--max-new-tokens", type=int, default=None,
                      help="tokens per completion (default: all the room the context leaves after the prompt)")
    samp.add_argument("--max-context", type=int, default=None,
                      help="prompt + completion tokens; above the model's native length the RoPE is extended "
                           "with YaRN (factor = N / native) (default: the model's)")
    samp.add_argument("--seed", type=int, default=0)
    samp.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight at once")
    grade = p.add_argument_group("grading")
    grade.add_argument("--thinking", action="store_true", help="the answer is what follows the last </think>")
    grade.add_argument("--time-limit", type=_positive_float, default=15.0, help="seconds per test")
    grade.add_argument("--memory-mb", type=_positive_int, default=4096, help="memory per test")
    grade.add_argument("--lcb-exact", action="store_true", help="grade with LiveCodeBench's exact comparison")
    grade.add_argument("--workers", type=int, default=0, help="sandbox processes (0: one per core)")
    p.add_argument("--out", type=folder, default=None,
                   help="folder for results.json and samples.jsonl; re-running on it resumes")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    try:
        args.ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        p.error(f"--k: expected comma-separated integers, got {args.k!r}")
    for name, low in (("n", 1), ("max_running_requests", 1), ("concurrency", 1), ("workers", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not args.ks or args.ks[0] < 1 or args.ks[-1] > args.n:
        p.error(f"--k {args.k}: each k must be in 1..--n ({args.n})")
    for name in ("max_new_tokens", "max_context"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.server and not args.tokenizer:
        p.error("--server needs --tokenizer DIR: prompts are sent as token ids of the served model's tokenizer")
    if not 0 < args.top_p <= 1 or args.temperature < 0:
        p.error("--top-p must be in (0, 1] and --temperature >= 0")
    if args.lcb_exact and not lcb_exact_supported():
        p.error("--lcb-exact: this sandbox has no lcb_exact grading option (sandbox.grader.Options)")
    return args


def parse_compare_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl.evaluate compare",
                                description="Is B better than A? The pass@1 difference B - A with a paired "
                                            "bootstrap 95% interval over problems, a sign test on per-problem "
                                            "pass rates, and the problems that flipped.")
    p.add_argument("a", type=Path, help="an rl.evaluate --out folder (or its results.json)")
    p.add_argument("b", type=Path, help="another, over the same problems")
    p.add_argument("--common", action="store_true", help="compare the problems both cover when the sets differ")
    p.add_argument("--resamples", type=number(int, high=MAX_RESAMPLES), default=10_000,
                   help=f"bootstrap resamples (at most {MAX_RESAMPLES:,})")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p.parse_args(argv)


def lcb_exact_supported() -> bool:
    from sandbox.grader import Options
    return "lcb_exact" in {f.name for f in dataclasses.fields(Options)}


# ---- serving ------------------------------------------------------------------------------------------

def native_context(model_dir: Path) -> int:
    from rl.rollout.sglang import read_config
    config = read_config(model_dir)
    native = config.get("max_position_embeddings")
    if not isinstance(native, int) or native < 1:
        raise ValueError(f"{model_dir / 'config.json'}: max_position_embeddings must be a positive integer")
    return native


def yarn_view(model_dir: Path, max_context: int, into: Path) -> tuple[Path, dict | None]:
    """The model folder as the embedded server should load it for `max_context` tokens: unchanged when the
    checkpoint covers it, else a folder of links to its files with the YaRN override (the one SGLang gets
    through --json-model-override-args) merged into config.json."""
    from rl.rollout.sglang import read_config, yarn_override
    config = read_config(model_dir)
    override = yarn_override(config, max_context, str(model_dir / "config.json"))
    if override is None:
        return model_dir, None
    into.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (into / f.name).symlink_to(f.resolve())
    (into / "config.json").write_text(json.dumps({**config, **override}, indent=2))
    return into, override


@contextlib.contextmanager
def serve(args, log_dir: Path):
    """(urls, facts for results.json): the servers to use, started here with --model."""
    if args.server:  # their URLs are not recorded: a resume may reach the same model elsewhere
        yield list(args.server), {}
        return
    from rl.rollout.embedded import EmbeddedServer
    from rl.rollout.sglang import read_config, yarn_override
    facts = {"engine": args.engine}
    key = ["--api-key", args.api_key] if args.api_key else []
    with tempfile.TemporaryDirectory(prefix="rl-evaluate-") as tmp:
        model = args.model
        if args.engine == "sglang":
            extra, timeout = ["--engine", "sglang", *key], 1800.0
            if args.max_context:  # the launcher adds the YaRN override itself
                extra += ["--context-length", str(args.max_context)]
                facts["yarn"] = yarn_override(read_config(model), args.max_context, str(model / "config.json"))
        else:
            extra, timeout = ["--max-running-requests", str(args.max_running_requests), *key], 600.0
            if args.max_context:
                model, facts["yarn"] = yarn_view(model, args.max_context, Path(tmp) / "model")
                extra += ["--context-length", str(args.max_context)]
        log = log_dir / "server.log" if log_dir else None
        print(f"starting the {args.engine} server on {args.model} ...", file=sys.stderr, flush=True)
        with EmbeddedServer(model, extra_args=extra, log_path=log, startup_timeout=timeout) as server:
            yield [server.url], facts


def served_model(urls: list[str], api_key: str | None) -> tuple[str | None, int | None]:
    """(model id, context length) as the first server reports them at /v1/models (SGLang's id and
    max_model_len); None for what it does not say."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        model = httpx.get(f"{urls[0]}/v1/models", headers=headers, timeout=30).json()["data"][0]
        name, context = model.get("id"), model.get("max_model_len")
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    return (name if isinstance(name, str) else None,
            context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None)


def stop_ids(folder: Path, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's, config.json's and generation_config.json's."""
    found = [tokenizer.eos_token_id]
    for name in ("config.json", "generation_config.json"):
        try:
            found.append(json.loads((folder / name).read_text()).get("eos_token_id"))
        except (OSError, ValueError, AttributeError):
            continue
    ids = []
    for x in found:
        ids += x if isinstance(x, list) else [x]
    return sorted({i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 0})


# ---- the evaluation -----------------------------------------------------------------------------------

async def run(args) -> dict:
    from rl import data, evaluation
    from rl.reward import RewardSettings
    from rl.rollout.client import RolloutClient, wait_healthy
    from sandbox import SandboxPool

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        records, load_report = data.load_problems(args.problems, strict=args.strict, progress=args.progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    kept, filter_report = data.filter_problems(records, window=args.window, difficulties=args.difficulty,
                                               dedup=args.dedup)
    if not kept:
        raise evaluation.EvaluationError(
            f"no problems left: {load_report.loaded} loaded from {', '.join(map(str, args.problems))}, dropped "
            f"{dict(filter_report.dropped) or 'none'} by --window {args.window or '(all)'!r} / --difficulty "
            f"{' '.join(args.difficulty) or '(all)'}")
    tokenizer_dir = args.tokenizer or args.model
    tokenizer = data.load_tokenizer(tokenizer_dir)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    with serve(args, args.out) as (urls, served):
        try:
            await wait_healthy(urls, timeout=args.wait if args.server else 600, api_key=args.api_key,
                               interval=min(1.0, args.wait))
        except TimeoutError as e:
            raise evaluation.EvaluationError(f"server unreachable: {e}") from None
        name, context = served_model(urls, args.api_key)
        if args.max_context and context and context < args.max_context:
            raise evaluation.EvaluationError(
                f"--max-context {args.max_context}: the server serves {context} tokens; start it with "
                f"`python -m rl.serve --engine sglang --model DIR --context-length {args.max_context}`")
        context = args.max_context or context or (native_context(args.model) if args.model else None)
        if context is None and args.max_new_tokens is None:
            raise evaluation.EvaluationError("the server does not report its context length: give --max-new-tokens")
        limit = (context - (args.max_new_tokens or 1)) if context else 1 << 30
        if limit < 1:
            raise evaluation.EvaluationError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt "
                                             f"in a context of {context}")
        prompts, too_long = data.render_prompts(kept, tokenizer, args.prompt, limit, progress=args.progress)
        if not prompts:
            raise evaluation.EvaluationError(f"all {too_long} prompts are longer than {limit} tokens")
        sampling = {"temperature": args.temperature, "top_p": args.top_p,
                    "stop_token_ids": stop_ids(tokenizer_dir, tokenizer)}
        if args.max_new_tokens:
            sampling["max_new_tokens"] = args.max_new_tokens
        meta = {"model": str(args.model) if args.model else name, "tokenizer": str(tokenizer_dir),
                "problems": [str(p) for p in args.problems], "window": args.window,
                "difficulties": list(args.difficulty), "dedup": args.dedup, "prompt": args.prompt,
                "max_context": args.max_context, **served,
                "data": {"load": load_report.to_json(), "filter": filter_report.to_json(),
                         "prompt_too_long": too_long}}
        settings = RewardSettings(time_limit=args.time_limit, memory_mb=args.memory_mb, thinking=args.thinking)
        grading = {"lcb_exact": True} if args.lcb_exact else {}
        async with RolloutClient(urls, max_concurrency=args.concurrency, api_key=args.api_key) as client:
            with SandboxPool(args.workers or None, **grading) as pool:
                return await evaluation.evaluate(
                    client, pool, tokenizer, prompts, n=args.n, ks=args.ks, sampling=sampling, settings=settings,
                    seed=args.seed, out_dir=args.out, progress=args.progress, context_length=context, meta=meta)


# ---- the console --------------------------------------------------------------------------------------

def table(results: dict) -> str:
    """Totals and the breakdowns by difficulty and platform as one text table."""
    ks = results["ks"]
    head = ["", "problems"] + [f"pass@{k}" for k in ks]
    body = [["all", results["totals"]["problems"]] + [results["totals"].get(f"pass@{k}") for k in ks]]
    for title in ("by_difficulty", "by_platform"):
        groups = results[title]
        if len(groups) > 1 or (groups and "unknown" not in groups):
            for name, g in groups.items():
                body.append([f"{title[3:]}={name}", g["problems"]] + [g.get(f"pass@{k}") for k in ks])
    cells = [head] + [[row[0], str(row[1])] + [f"{v:.4f}" if isinstance(v, float) else "-" for v in row[2:]]
                      for row in body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    t = results["totals"]
    if t.get("samples"):
        lines.append(f"{t['samples']} samples: format errors {t['format_error_rate']:.3f}, truncated "
                     f"{t['truncated_frac']:.3f}, mean length {t['mean_length']:.0f} tokens")
    return "\n".join(lines)


def compare_text(c: dict) -> str:
    low, high = c["ci95"]
    s = c["sign_test"]
    lines = [f"A: {c['a']}", f"B: {c['b']}",
             f"{c['problems']} problems" + (f" (the common subset: {len(c['only_a'])} only in A, "
                                             f"{len(c['only_b'])} only in B left out)" if c["only_a"] or c["only_b"]
                                             else ""),
             f"pass@1  A {c['pass@1_a']:.4f}  B {c['pass@1_b']:.4f}  B - A {c['diff']:+.4f}  "
             f"95% CI [{low:+.4f}, {high:+.4f}]" + ("  (0 is inside: no clear difference)" if low <= 0 <= high
                                                   else ""),
             f"sign test: B better on {s['b_better']}, A better on {s['a_better']}, ties {s['ties']}; "
             f"p = {s['p_value']:.4g}",
             f"flipped ({len(c['flipped'])}): solved by one, never by the other"]
    lines += [f"  {'+' if f['gained'] else '-'} {f['id']}: A {f['a']} -> B {f['b']}" for f in c["flipped"]]
    lines += [f"note: {n}" for n in c["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    from rl.evaluation import EvaluationError, compare, load_results
    from rl.rollout.client import RolloutError
    from rl.rollout.embedded import ServerStartError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        args = parse_compare_args(argv[1:])
        try:
            c = compare(load_results(args.a), load_results(args.b), common=args.common, resamples=args.resamples)
        except EvaluationError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(c, indent=1) if args.json else printable(compare_text(c)))
        return 0
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except (ValueError, ServerStartError, OSError) as e:  # ValueError: DataError, EvaluationError, LaunchError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RolloutError as e:
        print(f"error: {e}" + (f"\nwhat was graded is kept: re-run with --out {args.out} to resume" if args.out
                               else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted{'; re-run with the same --out to resume' if args.out else ''}", file=sys.stderr)
        return 130
    print(printable(table(results)))
    if args.out:
        print(f"results: {args.out / 'results.json'}, samples: {args.out / 'samples.jsonl'}")
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()
    sys.exit(main())
