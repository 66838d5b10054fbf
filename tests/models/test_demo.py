"""`python -m models.demo` end to end, as `make run` runs it, and its output folder read by transformers."""
import json
import subprocess
import sys
from pathlib import Path

import transformers

from models.demo import PROMPTS_FILE


def _run(*args):
    return subprocess.run([sys.executable, "-m", "models.demo", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])


def test_demo_runs_and_writes_a_transformers_folder(tmp_path):
    proc = _run("--out", str(tmp_path), "--max-new-tokens", "8", "--layers", "1", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for p in json.loads(PROMPTS_FILE.read_text()):
        assert p["name"] in proc.stdout
    assert "= 0\n" in proc.stdout  # saved and reloaded logits equal the in-memory ones exactly

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    records = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    for r in records:
        assert len(r["output_ids"]) == len(r["logprobs"]) <= 8
        assert r["finish_reason"] in ("stop", "length")


def test_demo_help():
    proc = _run("--help")
    assert proc.returncode == 0
    for option in ("--out", "--max-new-tokens", "--temperature", "--seed", "--layers"):
        assert option in proc.stdout
