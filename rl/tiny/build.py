"""Build the tiny model folder: tokenizer, tiny Qwen3, supervised warm start on the noisy
demonstrations of the training problems, Hugging Face export."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
from tqdm import tqdm

from models.hf_io import save_hf
from models.tokenizer import PAD
from models.weights import init_params
from rl.tiny.model import encode_pair, tiny_config, train_tokenizer
from rl.tiny.tasks import HABITS, TRAIN_FILE, demonstrations, read_jsonl
from rl.tiny.warmstart import warm_start


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    steps: int = 200          # warm-start minibatches: enough to copy constants (see docs/tiny.md)
    batch_size: int = 32
    lr: float = 1e-2
    layers: int = 2


def build(out_dir: str | Path, seed: int = 0, settings: BuildSettings = BuildSettings(),
          train_file: str | Path = TRAIN_FILE, progress: bool = True) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer with chat template) and
    warmstart.json (settings, loss per step, seconds) to out_dir; returns out_dir. `seed` seeds the
    weights and the minibatch order."""
    out = Path(out_dir)
    start = time.perf_counter()

    def say(text):
        if progress:
            print(f"[tiny {time.perf_counter() - start:5.1f}s] {text}", flush=True)

    problems = read_jsonl(Path(train_file))
    say(f"training a BPE tokenizer on {len(problems)} problems from {train_file}")
    tokenizer = train_tokenizer(problems)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)

    config = tiny_config(tokenizer, settings.layers)
    params = init_params(config, jax.random.key(seed))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    pairs = [encode_pair(tokenizer, p, code) for p in problems for code in demonstrations(p)]
    say(f"tiny Qwen3: {settings.layers} layers, hidden {config.hidden_size}, vocabulary {config.vocab_size}, "
        f"{n_params / 1e6:.2f}M parameters; warm start: {settings.steps} steps of {settings.batch_size}, lr {settings.lr}; "
        f"{len(pairs)} demonstrations (each problem's reference and its {len(HABITS) - 1} wrong habits)")
    with tqdm(total=settings.steps, desc="warm start", unit="step", disable=not progress) as bar:
        def on_step(step, loss):
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        params, losses = warm_start(params, config, pairs, steps=settings.steps, batch_size=settings.batch_size,
                                    lr=settings.lr, seed=seed, pad_id=tokenizer.convert_tokens_to_ids(PAD),
                                    on_step=on_step)
    save_hf(out, config, params)
    seconds = time.perf_counter() - start
    (out / "warmstart.json").write_text(json.dumps(
        {"seed": seed, "train_file": str(train_file), "problems": len(problems), "settings": dataclasses.asdict(settings),
         "parameters": n_params, "losses": losses, "seconds": round(seconds, 1)}, indent=1))
    say(f"answer loss {losses[0]:.3f} -> {losses[-1]:.3f}; model folder {out}")
    return out
