"""The engine's batch width follows the running rows down a ladder of compiled widths, and moving rows
to a narrower width changes no request's output."""
from __future__ import annotations

import threading

import numpy as np

from models.sampler import SamplingParams
from rl.rollout.engine import MIN_WIDTH, Engine, Request, width_rung


def test_a_rung_covers_the_rows_and_wastes_at_most_a_fifth_above_16_rows():
    for rows in range(1, 1025):
        w = width_rung(rows)
        assert w >= rows and w % MIN_WIDTH == 0, (rows, w)
        assert rows <= 4 * MIN_WIDTH or (w - rows) / w < 0.2, (rows, w)
        assert width_rung(w) == w  # a rung is its own width: no rebuild while the rows fill it exactly


def test_rungs_are_few_per_doubling():
    rungs = sorted({width_rung(n) for n in range(1, 1025)})
    for lo in (32, 64, 128, 256, 512):
        assert sum(lo < r <= 2 * lo for r in rungs) == 4


def test_outputs_do_not_depend_on_the_width_they_ran_at(serve_model_dir):
    """Requests of very different lengths shrink the width several times while the long ones run; each
    greedy completion equals the same request run alone."""
    import models

    cfg, params = models.load_hf(serve_model_dir, remat="none")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, int(rng.integers(4, 12))).tolist() for _ in range(20)]
    lengths = [2 + 2 * i for i in range(20)]  # 2..40: the batch narrows from 20 rows to 1

    def run(engine, items):
        done = threading.Semaphore(0)
        requests = [Request(p, SamplingParams(max_new_tokens=m, temperature=0.0), on_update=lambda _: done.release())
                    for p, m in items]
        engine.submit(requests)
        for _ in requests:
            assert done.acquire(timeout=300)
        return [r.output_ids for r in requests]

    engine = Engine(params, cfg, slots=32)
    widths = []
    fit = engine._fit
    engine._fit = lambda longest: widths.append(fit(longest)) or widths[-1]
    try:
        together = run(engine, list(zip(prompts, lengths)))
        widths_together = list(widths)
        alone = [run(engine, [item])[0] for item in list(zip(prompts, lengths))[::5]]
    finally:
        engine.close()
    assert together[::5] == alone
    assert [len(o) for o in together] == lengths
    changes = [w for i, w in enumerate(widths_together) if i == 0 or w != widths_together[i - 1]]
    assert changes[0] == 20 and len(changes) >= 5 and changes == sorted(changes, reverse=True), widths_together
