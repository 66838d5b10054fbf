"""The tiny task of the CPU main job: shipped problems, splits, and the warm-started model folder."""
import json
import re

import numpy as np
import pytest

from rl.tiny import build
from rl.tiny.build import BuildSettings
from rl.tiny.model import encode_pair, template_pieces, train_tokenizer
from rl.tiny.tasks import HABITS, HELDOUT_FILE, OPS_BY_NAME, TRAIN_FILE, demonstrations, make_splits, read_jsonl
from sandbox import Problem, SandboxPool


@pytest.fixture(scope="module")
def shipped():
    return read_jsonl(TRAIN_FILE), read_jsonl(HELDOUT_FILE)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool() as p:
        yield p


def off_by_one(problem: dict) -> str:
    """The reference program with its constant replaced by k + 1 (or, without one, another program
    over the same input): the slip the tests are built to catch."""
    k = problem["metadata"]["k"]
    if k:
        return OPS_BY_NAME[problem["metadata"]["op"]].code.format(k=k + 1)
    return re.sub(r"print\((.*)\)$", r"print(\1, 0)", problem["solution"])


def test_shipped_files_are_what_the_generator_writes(shipped):
    assert list(shipped) == [json.loads(json.dumps(s)) for s in make_splits(0)]


def test_splits_do_not_overlap_and_heldout_pairs_are_compositions_of_training_parts(shipped):
    train, heldout = shipped
    assert len(train) >= 150 and 40 <= len(heldout) <= 64  # held-out small enough to evaluate every few steps
    train_programs = {p["solution"] for p in train}
    assert not train_programs & {p["solution"] for p in heldout}
    assert not {p["question"] for p in train} & {p["question"] for p in heldout}
    train_ops = {p["metadata"]["op"] for p in train}
    train_ks = {p["metadata"]["k"] for p in train}
    for p in heldout:
        assert p["metadata"]["op"] in train_ops and p["metadata"]["k"] in train_ks, p["id"]
    assert len({p["id"] for p in train + heldout}) == len(train) + len(heldout)


def test_every_reference_passes_in_the_sandbox_and_off_by_one_and_wrong_habit_programs_fail(shipped, pool):
    problems = [p for split in shipped for p in split]
    demos = [demonstrations(p) for p in problems]
    assert all(d[0] == p["solution"] and len(d) == len(HABITS) == 3 for p, d in zip(problems, demos))
    jobs = [(Problem.from_dict(p), p["solution"]) for p in problems]
    jobs += [(Problem.from_dict(p), off_by_one(p)) for p in problems]
    jobs += [(Problem.from_dict(p), code) for p, d in zip(problems, demos) for code in d[1:]]
    results = pool.grade_many(jobs)
    n = len(problems)
    assert [p["id"] for p, r in zip(problems, results[:n]) if not r.passed] == []
    assert [p["id"] for p, r in zip(problems, results[n:2 * n]) if r.passed] == []
    wrong = [(p["id"], h.name) for p in problems for h in HABITS[1:]]
    assert [w for w, r in zip(wrong, results[2 * n:]) if r.passed] == []


def test_prompts_and_answers_are_short(shipped):
    train, heldout = shipped
    tokenizer = train_tokenizer(train)
    # The fixed template paragraphs are one token each, so a prompt is mostly its question.
    for piece in template_pieces():
        assert len(tokenizer.encode(piece, add_special_tokens=False)) == 1
    assert max(len(encode_pair(tokenizer, p)[0]) for p in train + heldout) <= 40
    lengths = [len(encode_pair(tokenizer, p, code)[1]) for p in train + heldout for code in demonstrations(p)]
    assert max(lengths) <= 40
    # Every held-out constant is one token that also occurs in training answers, so it can be copied.
    ids = {t for p in train for t in encode_pair(tokenizer, p)[1]}
    for p in heldout:
        k = p["metadata"]["k"]
        assert set(tokenizer.encode(f" {k}")) <= ids or set(tokenizer.encode(str(k))) <= ids, p["id"]


def test_build_writes_a_loadable_folder_whose_warm_start_lowers_the_loss(tmp_path):
    from models import load_hf
    from transformers import AutoTokenizer

    out = build(tmp_path / "model", seed=0, settings=BuildSettings(steps=12, batch_size=8, lr=5e-3),
                progress=False)
    cfg, params = load_hf(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert cfg.vocab_size == len(tokenizer) and tokenizer.chat_template
    assert len(encode_pair(tokenizer, read_jsonl(HELDOUT_FILE)[0])[0]) <= 40  # the template tokens survive saving
    losses = json.loads((out / "warmstart.json").read_text())["losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_cli_regenerates_the_shipped_files_and_refuses_bad_arguments(tmp_path, shipped, capsys):
    from rl.tiny.__main__ import main

    assert main(["problems", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.jsonl").read_text() == TRAIN_FILE.read_text()
    assert (tmp_path / "heldout.jsonl").read_text() == HELDOUT_FILE.read_text()
    for bad, message in ((["--steps", "1"], "--steps must be at least 2"),  # optax: a decay of 0 steps
                         (["--lr", "inf"], "--lr must be a positive finite number"),  # trained to NaN, exit 0
                         (["--out", ""], "expected a folder")):
        with pytest.raises(SystemExit) as exit_info:
            main(["build", "--out", str(tmp_path / "m"), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["problems", "--out", str(tmp_path / "a_file")]) == 2  # was a FileExistsError traceback
    assert "python -m rl.tiny problems: " in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    assert main(["build", "--out", str(tmp_path / "m"), "--train", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: missing ['solution', 'tests']" in capsys.readouterr().err


def test_help_shows_no_none_defaults(capsys):
    """A required option's "(default: None)" read as if it were optional."""
    from rl.tiny.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["build", "--help"])
    out = capsys.readouterr().out
    assert "--out OUT" in out and "(default: None)" not in out and "(default: 0)" in out
