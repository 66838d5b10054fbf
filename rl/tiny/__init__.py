"""A tiny learnable code task for the CPU main job: parameterised stdin/stdout problems with a
held-out split (tasks), a locally trained tokenizer and tiny Qwen3 (model), and a short supervised
warm start on a noisy demonstrator's programs, the reference and problem-independent wrong habits
(warmstart), assembled by `build`. RL has to find which habit the sandbox passes. See docs/tiny.md."""
from rl.tiny.build import BuildSettings, build
from rl.tiny.tasks import HELDOUT_FILE, TRAIN_FILE, make_splits

__all__ = ["BuildSettings", "HELDOUT_FILE", "TRAIN_FILE", "build", "make_splits"]
