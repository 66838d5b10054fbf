"""The LiveCodeBench prompt (stdin variant), as chat messages, and the answer format the model learns.

The texts are lcb_runner's (prompts/code_generation.py): the generic system message, then the user
turn "### Question", "### Format" and "### Answer" paragraphs. The tokenizer's chat template renders
the messages.
"""
from __future__ import annotations

SYSTEM = ("You are an expert Python programmer. You will be given a question (problem specification) and will "
          "generate a correct Python program that matches the specification and passes all tests.")
FORMAT_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
                "on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
                "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.")


def lcb_messages(question: str) -> list[dict]:
    """System + user messages of the LiveCodeBench stdin prompt for one question."""
    user = (f"### Question:\n{question}\n\n### Format: {FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
            "### Answer: (use the provided format with backticks)\n\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def answer_text(code: str) -> str:
    """A completion: the program in a python fence (what `sandbox.extract_code` reads back)."""
    return f"```python\n{code}\n```"
