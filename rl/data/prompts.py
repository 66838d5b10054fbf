"""Problem -> chat messages -> prompt token ids, with the model folder's own chat template.

The texts are LiveCodeBench's generic code-generation prompt (lcb_runner/prompts/
code_generation.py at its current main): a system message, and a user message with the question,
a "### Format:" paragraph (stdin program, or the starter code to complete) and the answer cue.
"""
from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateError
from tqdm import tqdm

from .sources import ProblemRecord

SYSTEM_PROMPT = ("You are an expert Python programmer. You will be given a question (problem "
                 "specification) and will generate a correct Python program that matches the "
                 "specification and passes all tests.")
FORMAT_WITH_STARTER = ("You will use the following starter code to write the solution to the "
                       "problem and enclose your code within delimiters.")
FORMAT_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do "
                "not directly test on the sample inputs). Enclose your code within delimiters as "
                "follows. Ensure that when the python program runs, it reads the inputs, runs the "
                "algorithm and writes output to STDOUT.")
STYLES = ("lcb", "r1")


def user_text(question: str, starter_code: str = "") -> str:
    """LiveCodeBench's user message: the starter-code variant when there is starter code."""
    text = f"### Question:\n{question}\n\n"
    if starter_code:
        text += f"### Format: {FORMAT_WITH_STARTER}\n```python\n{starter_code}\n```\n\n"
    else:
        text += f"### Format: {FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
    return text + "### Answer: (use the provided format with backticks)\n\n"


def prompt_messages(rec: ProblemRecord, style: str = "lcb") -> list[dict]:
    """"lcb": system prompt + user message. "r1": no system prompt (DeepSeek's advice for R1 and
    its distills, used by DeepCoder): the system text, a blank line, then the user message, all
    in one user turn, as LiveCodeBench lays it out for reasoning models."""
    user = user_text(rec.question, rec.starter_code)
    if style == "lcb":
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if style == "r1":
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{user}"}]
    raise ValueError(f"data.prompt: expected one of {STYLES}, got {style!r}")


def load_tokenizer(model_dir: str | Path):
    """The tokenizer and chat template of a local model folder (no hub access)."""
    from transformers import AutoTokenizer
    folder = Path(model_dir)
    if not folder.is_dir():  # transformers would take it for a hub repo id and say so
        raise FileNotFoundError(f"{folder}: no such model folder")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on a garbled tokenizer.json
        raise ValueError(f"{folder}: its tokenizer files do not load ({type(e).__name__}: {e})") from None


def render_prompt(rec: ProblemRecord, tokenizer, style: str = "lcb") -> list[int]:
    """Prompt token ids: the chat template's text (generation cue included) tokenized once. The
    template writes any BOS itself, so the tokenizer adds no special tokens of its own."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    try:
        text = tokenizer.apply_chat_template(prompt_messages(rec, style), tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as e:  # e.g. a template that refuses a system message (raise_exception)
        hint = " (the r1 prompt style sends no system message)" if style == "lcb" else ""
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', '')}: its chat template cannot render the "
                         f"{style!r} prompt: {e}{hint}") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompts(records, tokenizer, style: str = "lcb", max_prompt_tokens: int = 2048, *,
                   progress: bool = False) -> tuple[list[tuple[ProblemRecord, list[int]]], int]:
    """[(record, prompt_ids)] for the records whose prompt fits in max_prompt_tokens, and how
    many were dropped for being longer. `progress`: a progress bar."""
    if style not in STYLES:
        raise ValueError(f"data.prompt: expected one of {STYLES}, got {style!r}")
    if max_prompt_tokens < 1:
        raise ValueError(f"data.max_prompt_tokens: expected a positive integer, got {max_prompt_tokens}")
    kept, dropped = [], 0
    for rec in tqdm(records, desc="rendering prompts", unit=" prompts", disable=not progress, leave=False):
        ids = render_prompt(rec, tokenizer, style)
        if len(ids) > max_prompt_tokens:
            dropped += 1
        else:
            kept.append((rec, ids))
    return kept, dropped
