"""Shared defaults: the schema's own defaults (rl/experiment.py documents each field).

Every recipe derives from here and states only how it differs. The defaults already follow both
seeds where they agree: no KL, no entropy bonus, overlong filtering, unbiased group std (ddof=1,
as verl and TRL), AdamW with gradient clipping at 1.0, params fully sharded over every device.
"""
from rl.experiment import Experiment

EXPERIMENT = Experiment()
