"""The tiny model's tokenizer and config, and the token ids of a (prompt, answer) pair.

Prompts are rl.data's (the LiveCodeBench template, rendered with the tokenizer's chat template), so
the warm start sees exactly the token ids the RL loop will sample from. The byte-level BPE tokenizer
is trained on the rendered training conversations: each question word, each constant and each
program fragment become single tokens. Its pre-tokenizer splits at word boundaries, so no merge can
span the template's fixed paragraphs; those are added to the vocabulary whole instead (one token
each), which cuts a prompt from ~150 tokens to ~30 and makes every forward pass ~4x cheaper.
"""
from __future__ import annotations

from models.config import ModelConfig
from models.demo import tiny_qwen3
from models.tokenizer import IM_END, train_bpe_tokenizer
from rl.data import prompt_messages, render_prompt, to_record
from rl.data.prompts import SYSTEM_PROMPT, user_text
from rl.tiny.tasks import demonstrations

VOCAB_SIZE = 1024  # an upper bound: the merges run out near 750 tokens on the shipped problems
PROMPT_STYLE = "lcb"  # the experiment's data.prompt for the tiny runs


def template_pieces() -> list[str]:
    """The prompt text identical in every problem: the system prompt, and the user message around
    the question ("### Question:\\n" before it, the format and answer paragraphs after it)."""
    before, after = user_text("\0").split("\0")
    return [SYSTEM_PROMPT, before, after]


def answer_text(code: str) -> str:
    """A completion: the program in a python fence (what `sandbox.extract_code` reads back)."""
    return f"```python\n{code}\n```"


def record(problem: dict):
    """rl.data's ProblemRecord of a shipped problem (what the RL loop renders prompts from)."""
    return to_record(problem, problem["id"], f"tiny problem {problem['id']}")


def train_tokenizer(problems: list[dict]):
    """Byte-level BPE (models.tokenizer) trained on the full conversations of `problems`, every
    demonstration included, plus the template pieces as whole tokens."""
    template = train_bpe_tokenizer(["-"], vocab_size=260)  # only its chat template is used here
    texts = [template.apply_chat_template(prompt_messages(record(p), PROMPT_STYLE), tokenize=False,
                                          add_generation_prompt=True) + answer_text(code) + IM_END
             for p in problems for code in demonstrations(p)]
    tokenizer = train_bpe_tokenizer(texts, VOCAB_SIZE)
    tokenizer.add_tokens(template_pieces())
    return tokenizer


def encode_pair(tokenizer, problem: dict, code: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids ending with <|im_end|>), encoded apart as a sampler sees them; the
    answer is `code` (default: the reference solution)."""
    answer = tokenizer.encode(answer_text(problem["solution"] if code is None else code), add_special_tokens=False)
    return render_prompt(record(problem), tokenizer, PROMPT_STYLE), answer + [tokenizer.convert_tokens_to_ids(IM_END)]


def tiny_config(tokenizer, layers: int = 2) -> ModelConfig:
    """models.demo's tiny Qwen3 (hidden 128, 4 heads, tied embeddings) over this tokenizer."""
    return tiny_qwen3(len(tokenizer), layers, tokenizer)
