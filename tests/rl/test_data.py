"""Problem sources, filters and prompt rendering, on hand-written rows of each published format
(tests/rl/data/) and the tiny model folder's own tokenizer and chat template."""
import json
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.data import (DataError, filter_problems, load_problems, load_tokenizer, parse_window,
                     prepare, render_prompt, render_prompts, select, user_text)
from rl.data.__main__ import main
from rl.experiment import DataSection
from sandbox import Problem

DATA = Path(__file__).parent / "data"


def load(name, **kw):
    return load_problems(DATA / name, **kw)


def test_livecodebench_rows_load_with_private_tests_decoded():
    recs, report = load("lcb_code_generation.jsonl")
    assert report.to_json() == {"rows": 5, "loaded": 5, "skipped": 0, "formats": {"lcb": 5}, "errors": []}
    first = recs[0]
    assert (first.id, first.source, first.difficulty, first.platform) == ("abc900_a", "lcb", "easy", "atcoder")
    assert first.contest_date == datetime(2024, 8, 1)
    assert first.question.startswith("You are given two integers A and B.")
    assert json.loads(json.dumps(first.meta())) == {
        "id": "abc900_a", "source": "lcb", "difficulty": "easy", "platform": "atcoder",
        "contest_date": "2024-08-01T00:00:00", "origin": f"{DATA / 'lcb_code_generation.jsonl'} row 0 (line 1)"}
    # public, then the base64/zlib/pickle private tests, exactly as sandbox.Problem decodes them
    assert [t.input for t in first.problem.tests] == ["1 2\n", "10 20\n", "-5 5\n"]
    row = json.loads((DATA / "lcb_code_generation.jsonl").read_text().splitlines()[0])
    assert first.problem == Problem.from_lcb_row(row)
    leet = recs[1]
    assert leet.problem.fn_name == "maxValue" and leet.starter_code.startswith("class Solution:")
    assert [t.output for t in leet.problem.tests] == ["3", "5", "-4"]


def test_taco_deepcoder_and_sandbox_rows_load():
    taco, report = load("taco.jsonl")
    assert report.formats == {"taco": 2}
    assert [(r.id, r.difficulty, r.platform) for r in taco] == [
        ("taco.jsonl#0", "easy", "codeforces"), ("taco.jsonl#1", "medium_hard", "codewars")]
    assert taco[1].problem.fn_name == "add" and taco[1].problem.tests[0].input == "1\n2"

    deep, report = load("deepcoder_preview.jsonl")
    assert report.formats == {"deepcoder": 5}
    assert [r.problem.fn_name for r in deep] == ["maxValue", None, None, "double",
                                                 "numberOfEmployeesWhoMetTarget"]
    assert [len(r.problem.tests) for r in deep] == [1, 2, 1, 2, 1]
    # primeintellect's per-test function_call shape becomes the TACO object it splits
    assert deep[3].problem.tests[1].input == "-1" and deep[3].problem.tests[1].unwrap
    # a function name given only in each test's metadata (rllm's LCB rows) names the function
    assert deep[4].problem.tests[0].input == "[0, 1, 2, 3, 4]\n2"

    own, report = load("sandbox_problems.json")
    assert [(r.id, r.source, r.problem.fn_name) for r in own] == [("echo", "sandbox", None),
                                                                ("square", "sandbox", "square")]


def test_call_based_rows_without_starter_code_get_a_stub_to_complete():
    """With no starter code the prompt asked for a stdin program, and the grader calls fn_name."""
    deep, _ = load("deepcoder_preview.jsonl")
    assert deep[3].starter_code == "def double(arg1):\n    "
    text = user_text(deep[3].question, deep[3].starter_code)
    assert "following starter code" in text and "def double(arg1):" in text
    taco, _ = load("taco.jsonl")
    assert taco[1].starter_code == "def add(a, b):\n\t" and taco[0].starter_code == ""  # published ones kept
    from sandbox import SandboxPool
    with SandboxPool(1) as pool:
        assert pool.grade(deep[3].problem, deep[3].starter_code + "return 2 * arg1\n").verdict.name == "ACCEPTED"


def test_files_of_one_name_in_several_folders_keep_every_row(tmp_path):
    """Hub parquet exports name every subset's file 0000.parquet; ids made from the name alone collided."""
    paths = []
    for folder in ("taco", "primeintellect"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "taco.jsonl")
        shutil.copy(DATA / "taco.jsonl", paths[-1])
    recs, report = load_problems(paths)
    assert report.loaded == 4 and report.skipped == 0
    assert [r.id for r in recs] == [f"{p.as_posix()}#{i}" for p in paths for i in range(2)]
    assert [r.id for r in load_problems(paths[:1])[0]] == ["taco.jsonl#0", "taco.jsonl#1"]


def test_a_line_that_is_not_utf8_is_one_bad_row(tmp_path):
    lines = (DATA / "taco.jsonl").read_bytes().splitlines()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\n" + '{"question": "caf\u00e9"}'.encode("latin-1") + b"\n"
                     + lines[1] + b"\n")
    with pytest.warns(RuntimeWarning, match="skipped 1 malformed rows"):
        recs, report = load_problems(path)
    assert [r.id for r in recs] == ["mixed.jsonl#0", "mixed.jsonl#2"]
    assert report.errors[0].startswith(f"{path} row 1 (line 2): not UTF-8")


def test_parquet_rows_load_like_jsonl(tmp_path):
    rows = [json.loads(line) for line in (DATA / "lcb_code_generation.jsonl").read_text().splitlines()]
    for row in rows:  # as a timestamp column, the way a parquet export may type it
        row["contest_date"] = datetime.fromisoformat(row["contest_date"])
    path = tmp_path / "lcb.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    from_parquet, report = load_problems(path)
    from_jsonl, _ = load("lcb_code_generation.jsonl")
    assert report.loaded == 5
    strip = lambda r: (r.id, r.question, r.starter_code, r.problem, r.difficulty, r.platform, r.contest_date)
    assert list(map(strip, from_parquet)) == list(map(strip, from_jsonl))
    assert from_parquet[3].origin == f"{path} row 3"


def test_a_parquet_date_python_cannot_hold_is_that_rows_error(tmp_path):
    """A year-10000 timestamp failed the whole load with OverflowError."""
    rows = [json.loads(line) for line in (DATA / "lcb_code_generation.jsonl").read_text().splitlines()][:3]
    table = pa.Table.from_pylist(rows).drop_columns(["contest_date"])
    stamps = pa.array([1_700_000_000_000, 253_402_300_800_000, 1_700_000_000_000], pa.timestamp("ms"))
    pq.write_table(table.append_column("contest_date", stamps), path := tmp_path / "far.parquet")
    with pytest.warns(RuntimeWarning, match="skipped 1 malformed row"):
        records, report = load_problems(path)
    assert len(records) == 2 and "row 1: a value Python cannot hold" in report.errors[0]


def test_broken_rows_are_skipped_counted_and_named():
    path = DATA / "broken_rows.jsonl"
    with pytest.warns(RuntimeWarning, match=r"broken_rows.jsonl: skipped 4 malformed rows"):
        recs, report = load_problems(path)
    assert [r.id for r in recs] == ["broken_rows.jsonl#0", "broken_rows.jsonl#5"]
    assert (report.rows, report.loaded, report.skipped) == (6, 2, 4)
    assert [e.split(": ")[0:2] for e in report.errors] == [
        [f"{path} row 1 (line 2)", "tests"],
        [f"{path} row 2 (line 3)", "undecodable JSON (Expecting value"],
        [f"{path} row 3 (line 5)", "unknown row format (keys"],
        [f"{path} row 4 (line 6)", "metadata.func_name"]]


def test_strict_loading_raises_at_the_first_bad_row():
    with pytest.raises(DataError, match=r"broken_rows\.jsonl row 1 \(line 2\): tests: undecodable JSON"):
        load("broken_rows.jsonl", strict=True)


def test_rows_that_cannot_be_used(tmp_path):
    sandbox_row = {"tests": [{"input": "1\n", "output": "1\n"}]}
    cases = {  # file name -> (content, what the error says)
        "no_question.json": (json.dumps(sandbox_row), r"no_question\.json row 0: question: missing"),
        "dup.jsonl": ("\n".join(json.dumps({**sandbox_row, "id": "a", "question": "q"}) for _ in range(2)),
                      r"dup\.jsonl row 1 \(line 2\): id: 'a' already used by .*dup\.jsonl row 0"),
        "bad_date.json": (json.dumps({**sandbox_row, "question": "q", "contest_date": "soon"}),
                          r"bad_date\.json row 0: contest_date: expected an ISO date"),
        "empty_text.json": (json.dumps({**sandbox_row, "question": " "}),
                            r"empty_text\.json row 0: question: expected non-empty text"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=message):
            load_problems(tmp_path / name, strict=True)


def test_errors_name_the_published_field(tmp_path):
    import base64
    import pickle
    import zlib
    private = base64.b64encode(zlib.compress(pickle.dumps(json.dumps([{"input": "2\n", "output": 2}])))).decode()
    rows = [{"question_content": "q", "question_id": "lcb1", "metadata": "{}", "private_test_cases": private,
             "public_test_cases": json.dumps([{"input": "1\n", "output": "1\n", "testtype": "stdin"}])},
            {"question": "q", "input_output": json.dumps({"inputs": ["1\n"]})},
            {"problem": "q", "tests": json.dumps([{"type": "function_call", "input": [1], "output": [2]}])}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(RuntimeWarning):
        _, report = load_problems(path)
    assert [e.split(": ", 1)[1] for e in report.errors] == [
        "private_test_cases[0].output: expected a string",  # was tests[1]: public and private counted together
        "input_output.outputs: expected a list",  # TACO's field, not the sandbox's
        "tests[0].fn_name: missing in a function_call test"]  # was tests.inputs[0]: expected a string


def test_files_that_cannot_be_read_always_raise(tmp_path):
    (tmp_path / "bad.json").write_text("[{")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "rows.csv").write_text("a,b\n")
    for name, message in [("bad.json", "not readable as JSON"), ("bad.parquet", "unreadable parquet"),
                          ("rows.csv", "unsupported file type '.csv'"), ("missing.jsonl", "no such file")]:
        with pytest.raises(DataError, match=f"{tmp_path / name}: {message}"):
            load_problems(tmp_path / name)


@pytest.fixture(scope="module")
def lcb():
    return load("lcb_code_generation.jsonl")[0]


def test_window_is_inclusive_at_both_ends_like_livecodebench(lcb):
    def ids(window):
        return [r.id for r in filter_problems(lcb, window=window)[0]]
    assert ids("lcb_v5") == ["abc900_a", "3900", "2090A"]            # 2024-08-01 .. 2025-02-01
    assert ids("lcb_v6") == ["abc900_a", "3900", "2090A", "2100B"]   # .. 2025-05-01
    assert ids("2024-08-02:2025-01-31") == ["3900"]
    assert ids("2025-02-01:") == ["2090A", "2100B"]
    assert ids(":2024-07-31") == ["abc800_a"]
    kept, report = filter_problems(lcb, window="2024-08-01:2025-02-01")
    assert report.to_json() == {"kept": 3, "dropped": {"outside_window": 2}}
    assert report.dropped_ids == {"outside_window": ["2100B", "abc800_a"]}


def test_window_drops_problems_without_a_date():
    taco, _ = load("taco.jsonl")
    kept, report = filter_problems(taco, window="lcb_v5")
    assert kept == [] and report.dropped == {"no_contest_date": 2}
    assert len(filter_problems(taco, window="")[0]) == 2


@pytest.mark.parametrize("bad", ["2024-08-01", "2024-08-01:2025-02-30", "2025-02-01:2024-08-01",
                                 "v5", "2024-08-01T00:00:2025"])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError, match="data.window"):
        parse_window(bad)


def test_difficulty_filter(lcb):
    taco, _ = load("taco.jsonl")
    kept, report = filter_problems(lcb + taco, difficulties=("EASY", "Medium_Hard"))
    assert [r.id for r in kept] == ["abc900_a", "abc800_a", "taco.jsonl#0", "taco.jsonl#1"]
    assert report.dropped == {"difficulty": 3}


def test_dedup_by_normalized_text_keeps_the_first(lcb):
    deep, _ = load("deepcoder_preview.jsonl")  # its row 0 is LCB 3900 in other case and spacing
    kept, report = filter_problems(lcb + deep)
    assert "deepcoder_preview.jsonl#0" not in [r.id for r in kept] and "3900" in [r.id for r in kept]
    assert report.to_json() == {"kept": 9, "dropped": {"duplicate_text": 1}}
    assert report.dropped_ids["duplicate_text"] == ["deepcoder_preview.jsonl#0"]
    assert len(filter_problems(lcb + deep, dedup=False)[0]) == 10


# The exact texts of LiveCodeBench's generic prompt (lcb_runner/prompts/code_generation.py),
# written out here so that any drift in rl/data/prompts.py fails.
SYSTEM = ("You are an expert Python programmer. You will be given a question (problem specification) "
          "and will generate a correct Python program that matches the specification and passes all tests.")
STDIN_USER = (
    "### Question:\nYou are given two integers A and B.\nPrint A + B.\n\n"
    "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
    "when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
    "```python\n# YOUR CODE HERE\n```\n\n"
    "### Answer: (use the provided format with backticks)\n\n")
STARTER_USER = (
    "### Question:\nGiven an integer array nums, return the largest element of nums.\n\n"
    "### Format: You will use the following starter code to write the solution to the problem and "
    "enclose your code within delimiters.\n"
    "```python\nclass Solution:\n    def maxValue(self, nums: List[int]) -> int:\n        \n```\n\n"
    "### Answer: (use the provided format with backticks)\n\n")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("style", ["lcb", "r1"])
@pytest.mark.parametrize("row, user", [(0, STDIN_USER), (1, STARTER_USER)], ids=["stdin", "starter"])
def test_prompt_text_and_tokens(lcb, tokenizer, style, row, user):
    ids = render_prompt(lcb[row], tokenizer, style)
    if style == "lcb":
        text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
    else:
        text = f"<|im_start|>user\n{SYSTEM}\n\n{user}<|im_end|>\n"
    text += "<|im_start|>assistant\n"
    assert tokenizer.decode(ids) == text
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # one special token, no extra BOS


def test_long_prompts_are_dropped_and_counted(lcb, tokenizer):
    lengths = [len(render_prompt(r, tokenizer, "lcb")) for r in lcb]
    limit = sorted(lengths)[2]
    kept, dropped = render_prompts(lcb, tokenizer, "lcb", max_prompt_tokens=limit)
    assert [r.id for r, _ in kept] == [r.id for r, n in zip(lcb, lengths) if n <= limit]
    assert dropped == sum(n > limit for n in lengths) > 0
    assert all(len(ids) <= limit for _, ids in kept)
    assert render_prompts(lcb, tokenizer, "lcb", max_prompt_tokens=max(lengths))[1] == 0
    with pytest.raises(ValueError, match="data.prompt"):
        render_prompts(lcb, tokenizer, "chatml", 100)


def test_tokenizer_folder_without_chat_template(tmp_path, tiny_model_dir, lcb):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("chat_template*"):
        f.unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(lcb[0], load_tokenizer(folder))


def test_prepare_reports_every_stage(tokenizer):
    files = (str(DATA / "lcb_code_generation.jsonl"), str(DATA / "deepcoder_preview.jsonl"))
    lengths = sorted(len(render_prompt(r, tokenizer, "r1")) for r in load(files[0])[0])
    section = DataSection(train=files, window="lcb_v6", difficulties=("easy", "medium", "hard"),
                          prompt="r1", max_prompt_tokens=lengths[-1] - 1)
    prepared = prepare(section, tokenizer)
    assert prepared.report == {
        "split": "train", "files": list(files),
        "load": {"rows": 10, "loaded": 10, "skipped": 0, "formats": {"lcb": 5, "deepcoder": 5}, "errors": []},
        "filter": {"kept": 4, "dropped": {"outside_window": 1, "no_contest_date": 5}},
        "prompt_too_long": 1, "prompts": 3}
    assert [ids for _, ids in prepared.prompts] == [render_prompt(r, tokenizer, "r1") for r, _ in prepared.prompts]


def test_eval_split_and_held_out_problems(tokenizer):
    section = DataSection(train=(str(DATA / "deepcoder_preview.jsonl"),), difficulties=("easy",),
                          eval=(str(DATA / "lcb_code_generation.jsonl"),), eval_window="lcb_v5")
    held_out = prepare(section, tokenizer, "eval")  # eval ignores the training difficulties
    assert [r.id for r, _ in held_out.prompts] == ["abc900_a", "3900", "2090A"]
    train, report = select(DataSection(train=section.train), exclude=[r for r, _ in held_out.prompts])
    assert report["filter"] == {"kept": 4, "dropped": {"held_out": 1}}  # LCB 3900, via DeepCoder
    assert "deepcoder_preview.jsonl#0" not in [r.id for r in train]
    with pytest.raises(ValueError, match="split"):
        select(section, "test")


def test_command_line(tiny_model_dir, capsys):
    assert main([str(DATA / "lcb_code_generation.jsonl"), "--model", str(tiny_model_dir),
                 "--window", "2025-01-01:", "--show", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["filter"]["kept"], out["prompts"], out["examples"][0]["id"]) == (3, 3, "3900")
    assert out["examples"][0]["messages"][0]["role"] == "system"
    assert main([str(DATA / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(DATA / "missing.jsonl"), "--window", "2025-02-30:"])
    assert exit_.value.code == 2 and "--window" in (err := capsys.readouterr().err) and "2025-02-30" in err


def test_a_chat_template_that_refuses_the_prompt_is_named_with_the_style_to_try(tmp_path, tiny_model_dir, lcb):
    """A template that raises (Gemma's and Mistral's refuse a system message) was a jinja2 traceback."""
    folder = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}")
    tokenizer = load_tokenizer(folder)
    with pytest.raises(ValueError, match=r"cannot render the 'lcb' prompt: System role not supported \(the r1"):
        render_prompt(lcb[0], tokenizer, "lcb")
    assert render_prompt(lcb[0], tokenizer, "r1")


def test_garbled_tokenizer_files_are_named(tmp_path, tiny_model_dir):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").write_text("{x")
    with pytest.raises(ValueError, match="tok: its tokenizer files do not load"):
        load_tokenizer(folder)


def test_a_json_problem_file_with_a_byte_order_mark_loads_as_its_jsonl_twin_does(tmp_path):
    rows = [json.loads(line) for line in (DATA / "lcb_code_generation.jsonl").read_text().splitlines()]
    (tmp_path / "p.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    from_json, from_jsonl = load_problems(tmp_path / "p.json")[0], load_problems(tmp_path / "p.jsonl")[0]
    assert len(from_json) == len(rows) and [r.question for r in from_json] == [r.question for r in from_jsonl]
