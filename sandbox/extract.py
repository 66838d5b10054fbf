"""Pull the program out of a model completion."""
from __future__ import annotations

import re

# A fence opens with ``` and an optional language tag on its own line, and closes with ```.
# Possessive runs: with two plain [ \t]* around an empty tag, "```" and n spaces without a
# newline backtracked in O(n^2) (seconds for a 64 KB completion, holding the GIL).
_FENCE = re.compile(r"```[ \t]*+([A-Za-z0-9_+-]*+)[ \t]*+\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The last ```python (or ```py, or bare ```) block, or None when there is none.

    What to do with a completion without a block (reward -1 as a format failure, in the
    DeepCoder recipe) is the caller's decision; grading never guesses at unfenced code."""
    blocks = [body for lang, body in _FENCE.findall(completion)
              if lang.lower() in ("", "python", "py", "python3")]
    return blocks[-1] if blocks else None
