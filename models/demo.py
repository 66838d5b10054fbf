"""End-to-end demo of what exists today: tokenizer, model, Hugging Face export/import, sampling.

Everything is built locally (nothing is downloaded): a byte-level BPE tokenizer trained on the shipped
prompts and a tiny random-init Qwen3. The weights are random, so completions are gibberish: the demo
shows the plumbing (checkpoint round trip, batched KV-cache sampling, per-token logprobs and finish
reasons), not a trained model.

    python -m models.demo --out runs/demo --max-new-tokens 32 --temperature 1.0 --seed 0 --layers 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from models.config import ModelConfig
from models.hf_io import load_hf, save_hf
from models.sampler import generate
from models.tokenizer import IM_END, PAD, train_bpe_tokenizer
from models.transformer import forward
from models.weights import init_params

PROMPTS_FILE = Path(__file__).parent / "assets" / "demo_prompts.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (model in OUT/model)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="below 1e-6 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the sampling")
    p.add_argument("--layers", type=int, default=2)
    return p.parse_args(argv)


def tiny_qwen3(vocab_size: int, layers: int, tokenizer) -> ModelConfig:
    token_ids = {"eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
                 "pad_token_id": tokenizer.convert_tokens_to_ids(PAD)}
    return ModelConfig(arch="qwen3", vocab_size=vocab_size,
                       hidden_size=128, intermediate_size=384, num_layers=layers, num_heads=4, num_kv_heads=2,
                       head_dim=32, tie_word_embeddings=True, max_position_embeddings=4096,
                       hf_extra=tuple(sorted((k, json.dumps(v)) for k, v in token_ids.items())), remat="none")


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()

    def step(i, text):
        print(f"[{i}/5 {time.perf_counter() - start:5.1f}s] {text}", flush=True)

    prompts = json.loads(PROMPTS_FILE.read_text())
    model_dir = args.out / "model"
    step(1, f"training a byte-level BPE tokenizer on {len(prompts)} shipped prompts")
    tokenizer = train_bpe_tokenizer([p["prompt"] for p in prompts])
    tokenizer.save_pretrained(model_dir)
    print(f"      vocabulary {len(tokenizer)} tokens, chat template: Qwen ChatML")

    step(2, f"building a random-init Qwen3 ({args.layers} layers, hidden 128) and saving it to {model_dir}")
    cfg = tiny_qwen3(len(tokenizer), args.layers, tokenizer)
    params = init_params(cfg, jax.random.key(args.seed))
    save_hf(model_dir, cfg, params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"      {n_params / 1e6:.2f}M parameters, files: {', '.join(sorted(f.name for f in model_dir.iterdir()))}")

    step(3, "loading the folder back with models.load_hf and comparing logits with the in-memory model")
    loaded_cfg, loaded = load_hf(model_dir, remat="none")
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    token_ids = [tokenizer.encode(c, add_special_tokens=False) for c in chats]
    T = max(map(len, token_ids))
    batch = np.array([[0] * (T - len(t)) + t for t in token_ids])
    mask = np.array([[0] * (T - len(t)) + [1] * len(t) for t in token_ids])
    diff = np.abs(forward(params, cfg, batch, mask) - forward(loaded, loaded_cfg, batch, mask))[mask.astype(bool)]
    print(f"      max |logits(saved+loaded) - logits(in memory)| = {float(diff.max()):.3g}")

    step(4, f"sampling {args.max_new_tokens} new tokens for {len(prompts)} prompts "
            f"(temperature {args.temperature}, top_p {args.top_p}, seed {args.seed}, stop on {IM_END})")
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  stop_token_ids=[tokenizer.convert_tokens_to_ids(IM_END)], seed=args.seed)
    t0 = time.perf_counter()
    completions = generate(loaded, loaded_cfg, token_ids, **kwargs)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = generate(loaded, loaded_cfg, token_ids, **kwargs)
    second = time.perf_counter() - t0
    n_new = sum(len(c.token_ids) for c in completions)
    same = all(a.token_ids == b.token_ids for a, b in zip(completions, again))
    print(f"      first call {first:.1f}s (with compilation), second {second:.2f}s "
          f"({n_new / second:.0f} new tokens/s); same seed, same tokens: {same}")

    step(5, "completions (random weights: gibberish by design)")
    print(f"      {'prompt':<14} {'in':>4} {'new':>4} {'finish':<7} {'mean logprob':>12}  first tokens (logprob)")
    records = []
    for p, ids, c in zip(prompts, token_ids, completions):
        head = " ".join(f"{tokenizer.decode([t])!r}({lp:.2f})" for t, lp in zip(c.token_ids[:4], c.logprobs))
        print(f"      {p['name']:<14} {len(ids):>4} {len(c.token_ids):>4} {c.finish_reason:<7} "
              f"{np.mean(c.logprobs):>12.3f}  {head}")
        records.append(dict(name=p["name"], prompt=p["prompt"], prompt_tokens=len(ids), output_ids=c.token_ids,
                            text=tokenizer.decode(c.token_ids), logprobs=c.logprobs,
                            finish_reason=c.finish_reason, matched_stop=c.matched_stop))
    for r in records:
        print(f"      {r['name']}: {r['prompt'][:60]}... -> {r['text'][:60]!r}")
    (args.out / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"done in {time.perf_counter() - start:.1f}s; model and tokenizer in {model_dir}, "
          f"completions in {args.out / 'completions.jsonl'}")


if __name__ == "__main__":
    main()
