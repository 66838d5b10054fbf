"""Pull the program out of a model completion."""
from __future__ import annotations

PYTHON_TAGS = ("", "python", "py", "python3")


def extract_code(completion: str) -> str | None:
    """The last ```python (or ```py, or bare ```) block, or None when there is none.

    As LiveCodeBench's extract_code, fences are lines holding ``` and blocks are paired from the end,
    so a stray or unclosed fence earlier in the text (a draft, an inline ```x```) cannot shift the
    last block. A fence line with a language tag only opens a block: one left open at the end (a
    truncated completion) is passed over. A block tagged with another language is skipped.

    What to do with a completion without a block (reward -1 as a format failure, in the
    DeepCoder recipe) is the caller's decision; grading never guesses at unfenced code."""
    lines = completion.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    j = len(fences) - 1
    while j >= 1:
        if _tag(lines[fences[j]]) != "":  # an opener with no close after it
            j -= 1
            continue
        open_line, close_line = fences[j - 1], fences[j]
        if _tag(lines[open_line]) in PYTHON_TAGS:
            body = [line.removesuffix("\r") for line in lines[open_line + 1:close_line]]
            return "\n".join(body) + "\n" if body else ""
        j -= 2
    return None


def _tag(line: str) -> str:
    """The language tag of a fence line ("```python title=x" -> "python"); "" for a bare fence or a
    line where ``` does not start the text."""
    text = line.strip()
    if not text.startswith("```"):
        return ""
    words = text[3:].split()
    return words[0].lower() if words else ""
