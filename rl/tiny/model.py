"""The tiny model's tokenizer and config, and the token ids of a (prompt, answer) pair.

The BPE tokenizer is trained on the rendered training conversations, so the fixed prompt text, each
question word, each constant and each program fragment become single tokens: answers are 16-28
tokens, which keeps CPU sampling fast.
"""
from __future__ import annotations

from models.config import ModelConfig
from models.demo import tiny_qwen3
from models.tokenizer import IM_END, train_bpe_tokenizer
from rl.tiny.prompt import answer_text, lcb_messages

VOCAB_SIZE = 1024  # an upper bound: the merges run out near 750 tokens on the shipped problems


def render_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(lcb_messages(question), tokenize=False, add_generation_prompt=True)


def train_tokenizer(problems: list[dict]):
    """Byte-level BPE (models.tokenizer) trained on the full conversations of `problems`."""
    template = train_bpe_tokenizer(["-"], vocab_size=260)  # only its chat template is used here
    return train_bpe_tokenizer([render_prompt(template, p["question"]) + answer_text(p["solution"]) + IM_END
                                for p in problems], VOCAB_SIZE)


def encode_pair(tokenizer, problem: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids ending with <|im_end|>), encoded apart as a sampler sees them."""
    prompt = tokenizer.encode(render_prompt(tokenizer, problem["question"]), add_special_tokens=False)
    answer = tokenizer.encode(answer_text(problem["solution"]), add_special_tokens=False)
    return prompt, answer + [tokenizer.convert_tokens_to_ids(IM_END)]


def tiny_config(tokenizer, layers: int = 2) -> ModelConfig:
    """models.demo's tiny Qwen3 (hidden 128, 4 heads, tied embeddings) over this tokenizer."""
    return tiny_qwen3(len(tokenizer), layers, tokenizer)
