"""What coderl's commands share: the help formatter and argument types."""
import argparse
import math
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None (a required option has none, and an optional one's help
    says what leaving it out means, which "(default: None)" contradicted) and a flag's."""

    def _get_help_string(self, action):
        # A flag's default (store_true / store_false) is its absence: "(default: True)" on --no-x read backwards.
        return action.help if action.default is None or action.nargs == 0 else super()._get_help_string(action)


def window_arg(spec: str) -> str:
    """argparse type of --window (blank = every problem): checked before a load of gigabytes, not after;
    kept as text."""
    if spec.strip():
        from rl.data import parse_window  # lazily: --help stays fast

        try:
            parse_window(spec)
        except ValueError as e:  # its "data.window: " names the experiment key, not this flag
            raise argparse.ArgumentTypeError(str(e).removeprefix("data.window: ")) from None
    return spec


def number(kind=float, low: float = 0, strict: bool = True, high: float = math.inf):
    """An argparse type: a finite `kind` above `low` (at or above it unless strict), at most `high`."""
    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value) or value < low or (strict and value == low) or value > high:
            bounds = f"{'>' if strict else '>='} {low}" + (f" and <= {high:,}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"{text}: expected a number {bounds}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def printable(text: str) -> str:
    """text that stdout can encode: lone surrogates (valid in JSON strings, not in UTF-8) as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def folder(text: str) -> Path:
    """argparse type of a folder to write into: blank text would be the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    return Path(text)


def out_file(text: str) -> Path:
    """argparse type of a file to write: refused before the work, not after it, when it cannot be."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {path.absolute().parent} does not exist")
    return path
