"""Tests of prepare_data/: each converter on small fixtures and on the shared real data, the one-line errors
for bad input (with no output written), and the inspect report with a tokenizer built here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetuning.errors import UserError
from prepare_data import analysis, convert, converters, dialogue, inspect_data
from prepare_data.reading import Located, read_csv, read_json_records

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "prepare_data"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEED_TASKS = DATA / "alpaca_seed_tasks.jsonl"
ROLEPLAY = DATA / "gpteacher_roleplay_alpaca.json"
DOLLY = DATA / "gpteacher_toolformer_dolly_format.jsonl"


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.is_file(), reason=f"shared data file {path} is absent")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_convert(*args: str | Path) -> int:
    return convert.main([str(arg) for arg in args])


def user_error(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """Run convert expecting a user error; return its stderr, checked to be one line without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run_convert(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err.strip()


# --- format detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"conversations": []}, "sharegpt"),
        ({"messages": []}, "messages"),
        ({"instruction": "i", "instances": [], "id": "x"}, "seed_tasks"),
        ({"instruction": "i", "context": "", "response": "r"}, "dolly"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
    ],
)
def test_detect_json_format(record: dict, expected: str) -> None:
    assert converters.detect_json_format(Located("f.jsonl", 1, record)) == expected


def test_detect_json_format_unknown_names_keys() -> None:
    with pytest.raises(UserError, match=r"f.jsonl:3: cannot tell the format from the keys \('prompt'\)"):
        converters.detect_json_format(Located("f.jsonl", 3, {"prompt": "p"}))


# --- converters on fixtures and real data -------------------------------------------------------------------


def test_seed_tasks_one_record_per_instance(tmp_path: Path) -> None:
    out = tmp_path / "seed.jsonl"
    assert run_convert("--input", FIXTURES / "seed_tasks.jsonl", "--output", out) == 0
    assert read_jsonl(out) == [
        {"instruction": "Give the antonym of the word.", "input": "hot", "output": "cold"},
        {"instruction": "Give the antonym of the word.", "input": "up", "output": "down"},
        {"instruction": "Write a one-line greeting.", "input": "", "output": "Hello there!"},
    ]


@needs(SEED_TASKS)
def test_real_seed_tasks_give_175_records(tmp_path: Path) -> None:
    out = tmp_path / "seed.jsonl"
    run_convert("--input", SEED_TASKS, "--output", out)
    records = read_jsonl(out)
    assert len(records) == 175  # 175 tasks with exactly one instance each
    assert all(set(record) == {"instruction", "input", "output"} for record in records)


@needs(ROLEPLAY)
def test_real_roleplay_json_jsonl_round_trip(tmp_path: Path) -> None:
    jsonl, back = tmp_path / "roleplay.jsonl", tmp_path / "roleplay.json"
    run_convert("--input", ROLEPLAY, "--output", jsonl)
    assert len(read_jsonl(jsonl)) == 3146
    run_convert("--input", jsonl, "--output", back, "--to", "alpaca_json")
    assert json.loads(back.read_text(encoding="utf-8")) == json.loads(ROLEPLAY.read_text(encoding="utf-8"))


@needs(DOLLY)
def test_real_dolly_format_to_alpaca(tmp_path: Path) -> None:
    out = tmp_path / "tools.jsonl"
    run_convert("--input", DOLLY, "--output", out)
    records = read_jsonl(out)
    assert len(records) == 7673
    first = json.loads(DOLLY.read_text(encoding="utf-8").split("\n", 1)[0])
    assert records[0] == {
        "instruction": first["instruction"],
        "input": first["context"],
        "output": first["response"],
    }


def test_csv_with_named_columns(tmp_path: Path) -> None:
    out = tmp_path / "qa.jsonl"
    run_convert(
        "--input", FIXTURES / "columns.csv", "--output", out, "--instruction_column", "question",
        "--input_column", "background", "--output_column", "answer",
    )  # fmt: skip
    assert read_jsonl(out) == [
        {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
        {
            "instruction": "Summarize the note.",
            "input": "Line one of the note.\nLine two of the note.",
            "output": "A note of two lines.",
        },
        {"instruction": "Translate to French: cat", "input": "", "output": "chat"},
    ]


def test_csv_rows_start_line_counts_multiline_cells(tmp_path: Path) -> None:
    _, rows = read_csv(FIXTURES / "columns.csv")
    assert [row.line for row in rows] == [2, 3, 5]


def test_csv_without_instruction_column_takes_fixed_instruction(tmp_path: Path) -> None:
    out = tmp_path / "qa.jsonl"
    source = tmp_path / "pairs.csv"
    source.write_text("input,output\ncat,chat\ndog,chien\n", encoding="utf-8")
    run_convert("--input", source, "--output", out, "--instruction", "Translate to French.")
    assert read_jsonl(out)[1] == {"instruction": "Translate to French.", "input": "dog", "output": "chien"}


# --- dialogue transcripts ----------------------------------------------------------------------------------

INSTRUCTION = "Continue the conversation as Ada."


def test_dialogue_context_windows_stay_inside_the_scene(tmp_path: Path) -> None:
    out = tmp_path / "ada.jsonl"
    run_convert("--input", FIXTURES / "dialogue.csv", "--output", out, "--character", "ADA", "--context_lines", "2")
    assert read_jsonl(out) == [
        {"instruction": INSTRUCTION, "input": "", "output": "Morning! Is the oven warm yet?"},
        {
            "instruction": INSTRUCTION,
            "input": "Ben: Warm? It's been roaring since five.\nThe bell over the door rings.",
            "output": "Then let's get the rye in first.",
        },
        {
            # the row spelled 'ada' names her as the transcript does; Ben's empty line is skipped
            "instruction": "Continue the conversation as ada.",
            "input": "Ada: Then let's get the rye in first.\nCleo: I'll shape the loaves.",
            "output": "Good, and mind the seeds this time.",
        },
        {"instruction": INSTRUCTION, "input": "", "output": "Who left the flour open?"},
        {
            "instruction": INSTRUCTION,
            "input": "Ada: Who left the flour open?\nBen: Not me.",
            "output": "Somebody did, and now it's damp.",
        },
    ]


def test_dialogue_default_context_is_five_lines() -> None:
    _, rows = read_csv(FIXTURES / "dialogue.csv")
    records = list(
        dialogue.dialogue_to_alpaca(
            rows,
            character="Cleo",
            speaker_column="character",
            text_column="line",
            group_columns=["episode", "scene"],
        )
    )
    assert records == [
        {
            "instruction": "Continue the conversation as Cleo.",
            "input": "Ada: Morning! Is the oven warm yet?\nBen: Warm? It's been roaring since five.\n"
            "The bell over the door rings.\nAda: Then let's get the rye in first.",
            "output": "I'll shape the loaves.",
        }
    ]


def test_dialogue_new_episode_with_same_scene_number_starts_fresh() -> None:
    rows = [
        Located("t.csv", 2, {"speaker": "Ben", "text": "Bye.", "episode": "1", "scene": "1"}),
        Located("t.csv", 3, {"speaker": "Ada", "text": "Hello.", "episode": "2", "scene": "1"}),
        Located("t.csv", 4, {"speaker": "Ada", "text": "Again.", "episode": "2", "scene": "1"}),
    ]
    records = dialogue.dialogue_to_alpaca(
        rows,
        character="Ada",
        speaker_column="speaker",
        text_column="text",
        group_columns=["episode", "scene"],
    )
    assert [record["input"] for record in records] == ["", "Ada: Hello."]


def test_dialogue_unknown_character_lists_speakers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zed.jsonl"
    err = user_error(capsys, "--input", FIXTURES / "dialogue.csv", "--output", out, "--character", "Zed")
    assert "no lines spoken by --character 'Zed'" in err and "Ada (4)" in err
    assert not out.exists()


# --- chat data ---------------------------------------------------------------------------------------------


def test_sharegpt_to_messages_maps_roles(tmp_path: Path) -> None:
    out = tmp_path / "chat.jsonl"
    run_convert("--input", FIXTURES / "sharegpt.json", "--output", out)
    records = read_jsonl(out)
    assert [[turn["role"] for turn in record["messages"]] for record in records] == [
        ["system", "user", "assistant", "user", "assistant"],
        ["user", "assistant"],
    ]
    assert records[0]["messages"][2] == {"role": "assistant", "content": "Eight."}


def test_sharegpt_unknown_speaker_names_the_turn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.jsonl"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}
    source.write_text(f"{json.dumps(good)}\n{json.dumps(bad)}\n", encoding="utf-8")
    err = user_error(capsys, "--input", source, "--output", tmp_path / "out.jsonl")
    assert err.startswith(f"error: {source}:2: field 'conversations[1].from': unknown speaker 'robot'")


def test_messages_pass_through_and_chat_refuses_alpaca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chat.jsonl"
    run_convert("--input", FIXTURES / "messages.jsonl", "--output", out)
    assert read_jsonl(out)[1] == {
        "messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    }
    err = user_error(capsys, "--input", FIXTURES / "messages.jsonl", "--output", out, "--to", "alpaca")
    assert "convert only to --to messages" in err


def test_alpaca_to_messages(tmp_path: Path) -> None:
    out = tmp_path / "chat.jsonl"
    run_convert("--input", FIXTURES / "seed_tasks.jsonl", "--output", out, "--to", "messages")
    assert read_jsonl(out)[0] == {
        "messages": [
            {"role": "user", "content": "Give the antonym of the word.\n\nhot"},
            {"role": "assistant", "content": "cold"},
        ]
    }


# --- bad input: one line, exit 2, no output ------------------------------------------------------------

GOOD_LINE = '{"instruction": "Say hi.", "input": "", "output": "Hi."}'


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (
            '{"instruction": "Say hi.", "output": "Hi."',
            ":3: malformed JSON: Expecting ',' delimiter (column 43)",
        ),
        (
            '{"instruction": "Say hi.", "input": ""}',
            ":3: field 'output': missing (the record has: 'instruction', 'input')",
        ),
        (
            '{"instruction": "Say hi.", "input": "", "output": null}',
            ":3: field 'output': expected a string, got null",
        ),
        (
            '{"instruction": ["Say hi."], "output": "Hi."}',
            ":3: field 'instruction': expected a string, got a list",
        ),
        ('["Say hi.", "Hi."]', ":3: expected a JSON object, got a list"),
    ],
)
def test_bad_record_in_the_middle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str, expected: str
) -> None:
    source, out = tmp_path / "data.jsonl", tmp_path / "out" / "data.jsonl"
    source.write_text("\n".join([GOOD_LINE, GOOD_LINE, bad_line, GOOD_LINE]) + "\n", encoding="utf-8")
    err = user_error(capsys, "--input", source, "--output", out)
    assert err == f"error: {source}{expected}"
    assert not out.exists() and list(out.parent.iterdir()) == []  # no output, no temporary left behind


def test_failed_conversion_keeps_the_previous_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    source.write_text(GOOD_LINE + '\n{"instruction": 1, "output": "x"}\n', encoding="utf-8")
    out.write_text("previous\n", encoding="utf-8")
    user_error(capsys, "--input", source, "--output", out)
    assert out.read_text(encoding="utf-8") == "previous\n"


def test_json_list_error_names_the_line_of_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.json"
    source.write_text(
        '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c",\n   "output": false}\n]\n',
        encoding="utf-8",
    )
    err = user_error(capsys, "--input", source, "--output", tmp_path / "out.jsonl")
    assert err == f"error: {source}:3: field 'output': expected a string, got a boolean"


def test_csv_row_with_extra_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.csv"
    source.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    err = user_error(capsys, "--input", source, "--output", tmp_path / "out.jsonl")
    assert err == f"error: {source}:3: the row has 3 cells but the header has 2 columns"


def test_cli_subprocess_reports_one_line_and_writes_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "data.jsonl", tmp_path / "out.jsonl"
    source.write_text(f"{GOOD_LINE}\n{{not json}}\n{GOOD_LINE}\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "prepare_data" / "convert.py"),
            "--input",
            str(source),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    expected = "malformed JSON: Expecting property name enclosed in double quotes (column 2)"
    assert result.stderr == f"error: {source}:2: {expected}\n"
    assert not out.exists()


# --- inspect_data ------------------------------------------------------------------------------------------


def test_percentile_split_and_duplicates() -> None:
    values = list(range(1, 101))
    assert [analysis.percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    train, validation = analysis.split_indices(20, 0.1, seed=3)
    assert len(validation) == 2 and sorted(train + validation) == list(range(20))
    assert analysis.split_indices(20, 0.1, seed=3) == (train, validation)
    fmt, examples = analysis.load_examples(FIXTURES / "messy_alpaca.jsonl")
    assert fmt == "alpaca" and [example.line for example in examples] == [1, 2, 3, 4, 6, 7, 8]
    assert analysis.duplicate_of(examples) == {2: 0, 5: 1}  # a missing input equals an empty one


def test_inspect_dedupe_and_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dedup, train, validation = tmp_path / "dedup.jsonl", tmp_path / "train.jsonl", tmp_path / "val.json"
    messy = str(FIXTURES / "messy_alpaca.jsonl")
    inspect_data.main(
        [
            "--input", messy, "--dedupe", str(dedup), "--split_validation", "0.2",
            "--seed", "1", "--train_out", str(train), "--validation_out", str(validation),
        ]
    )  # fmt: skip
    report = capsys.readouterr().out
    assert "records: 7" in report
    assert "empty records: 2 (28.6%) (empty output: 1, empty instruction: 1; lines 4, 6)" in report
    assert "exact duplicates: 2 (28.6%) repeat an earlier record; line = earlier line: 3 = 1, 7 = 2" in report
    assert "pass --tokenizer DIR" in report
    assert len(read_jsonl(dedup)) == 5
    train_records, validation_records = read_jsonl(train), json.loads(validation.read_text(encoding="utf-8"))
    assert (len(train_records), len(validation_records)) == (4, 1)
    assert {json.dumps(r) for r in train_records + validation_records} == {json.dumps(r) for r in read_jsonl(dedup)}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE trained on a few KB of the role-play data, saved like any local tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    records = json.loads(ROLEPLAY.read_text(encoding="utf-8"))[:20]
    texts = [record["instruction"] + "\n" + record["output"] for record in records]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    directory = tmp_path_factory.mktemp("tokenizer")
    wrapped.save_pretrained(directory)
    return directory


@needs(ROLEPLAY)
def test_inspect_roleplay_report_and_histogram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer_dir: Path
) -> None:
    histogram = tmp_path / "lengths.png"
    inspect_data.main(["--input", str(ROLEPLAY), "--tokenizer", str(tokenizer_dir), "--histogram", str(histogram)])
    report = capsys.readouterr().out
    assert "records: 3146" in report and "format: alpaca" in report
    assert "exact duplicates: 0 (0.0%)" in report
    assert "  tokens " in report and "over --max_seq_length 512 tokens:" in report
    assert histogram.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_refuses_raw_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        inspect_data.main(["--input", str(FIXTURES / "sharegpt.json")])
    assert "sharegpt data is not a training file; convert it with prepare_data/convert.py" in capsys.readouterr().err


def test_read_json_records_ignores_blank_lines() -> None:
    assert [record.line for record in read_json_records(FIXTURES / "messy_alpaca.jsonl")] == [
        1,
        2,
        3,
        4,
        6,
        7,
        8,
    ]


def test_inspect_and_training_cut_the_same_samples_and_keep_the_same_loss_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_tokenizer
) -> None:
    """One truncation rule: the report's counts are those of training's data report on the same file."""
    from functools import partial

    from finetuning.data.encoding import encode_causal_record
    from finetuning.data.preprocessing import build_dataset
    from finetuning.data.records import load_data_file
    from finetuning.data.templates import get_template

    tokenizer_path = tmp_path / "tokenizer"
    tiny_tokenizer.save_pretrained(tokenizer_path)
    data = ROOT / "data" / "sample_instructions.jsonl"
    inspect_data.main(["--input", str(data), "--tokenizer", str(tokenizer_path), "--max_seq_length", "170"])
    report = capsys.readouterr().out
    over = int(report.split("over --max_seq_length 170 tokens: ")[1].split(" ")[0])
    kept = int(report.split("tokens in the loss after cutting: ")[1].split(" ")[0].replace(",", ""))

    encode = partial(
        encode_causal_record,
        tokenizer=tiny_tokenizer,
        template=get_template("alpaca"),
        max_length=170,
        train_on_inputs=False,
    )
    _, training = build_dataset(
        load_data_file(str(data)),
        encode,
        split="train",
        settings={"max_length": 170},
        tokenizer=tiny_tokenizer,
        pack_block_size=None,
        batch_size=8,
        num_proc=None,
        cache_dir=str(tmp_path / "cache"),
        overwrite_cache=True,
    )
    assert 0 < over < training.records  # some, not all: the comparison means something
    assert (over, kept) == (training.truncated, training.supervised_tokens)
