"""Problems for RL and evaluation: published sets read from local files, filtered, and rendered
to prompt token ids. See docs/data.md."""
from .filters import WINDOWS, FilterReport, filter_problems, normalized_text, parse_window
from .prepare import Prepared, prepare, select
from .prompts import (SYSTEM_PROMPT, load_tokenizer, prompt_messages, render_prompt,
                      render_prompts, user_text)
from .sources import (DataError, LoadReport, ProblemRecord, detect_format, id_prefixes, load_problems, read_rows,
                      to_record)

__all__ = ["WINDOWS", "DataError", "FilterReport", "LoadReport", "Prepared", "ProblemRecord",
           "SYSTEM_PROMPT", "detect_format", "filter_problems", "id_prefixes", "load_problems", "load_tokenizer",
           "normalized_text", "parse_window", "prepare", "prompt_messages", "read_rows", "render_prompt",
           "render_prompts", "select", "to_record", "user_text"]
