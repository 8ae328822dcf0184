"""Reading data: every format, odd-but-valid files, and one clear error for each kind of broken file."""

from __future__ import annotations

import json

import pytest

from finetuning.data.records import load_data_file
from finetuning.errors import UserError


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_alpaca_json_list_with_and_without_input(tmp_path):
    path = write(
        tmp_path,
        "a.json",
        json.dumps(
            [
                {"instruction": "Add.", "input": "1 + 2", "output": "3"},
                {"instruction": "Say hi.", "output": "hi", "extra": 7},
            ]
        ),
    )
    records = load_data_file(str(path)).records
    assert records == [
        {"instruction": "Add.", "input": "1 + 2", "output": "3"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]


def test_dolly_jsonl_with_empty_context(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"instruction": "Q", "context": "", "response": "A", "category": "x"}\n')
    assert load_data_file(str(path)).records == [{"instruction": "Q", "input": "", "output": "A"}]


def test_chat_records(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write(tmp_path, "c.jsonl", json.dumps({"messages": messages}) + "\n")
    assert load_data_file(str(path)).records == [{"messages": messages}]


def test_csv_with_named_columns(tmp_path):
    path = write(tmp_path, "c.csv", 'instruction,input,output\n"Add.","1, 2","3"\n')
    assert load_data_file(str(path)).records == [{"instruction": "Add.", "input": "1, 2", "output": "3"}]


def test_valid_but_odd_files_load(tmp_path):
    lines = '{"instruction": "Grüß dich", "input": "", "output": "こんにちは"}\r\n\r\n' * 2 + "\n\n"
    path = write(tmp_path, "odd.jsonl", b"\xef\xbb\xbf" + lines.encode("utf-8"))  # BOM, CRLF, blank lines
    assert [record["output"] for record in load_data_file(str(path)).records] == ["こんにちは", "こんにちは"]


def test_jsonl_content_in_a_json_file(tmp_path):
    path = write(tmp_path, "lines.json", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    assert len(load_data_file(str(path)).records) == 2


def test_empty_records_are_counted_not_silently_dropped(tmp_path):
    path = write(tmp_path, "e.jsonl", '{"instruction": "", "output": ""}\n{"instruction": "a", "output": "b"}\n')
    loaded = load_data_file(str(path))
    assert (len(loaded.records), loaded.empty_skipped) == (1, 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "empty.jsonl: no usable records"),
        ("blank.jsonl", "\n\n  \n", "blank.jsonl: no usable records"),
        ("trunc.json", '[{"instruction": "a", "output": "b"}, {"instr', "trunc.json:1: invalid JSON"),
        (
            "middle.jsonl",
            '{"instruction": "a", "output": "b"}\n{oops}\n{"instruction": "a", "output": "b"}\n',
            "middle.jsonl:2: invalid JSON",
        ),
        ("missing.jsonl", '{"instruction": "a"}\n', "missing.jsonl:1: field 'output': missing"),
        (
            "null.jsonl",
            '{"instruction": "a", "output": null}\n',
            "null.jsonl:1: field 'output': expected a string, got null",
        ),
        (
            "number.json",
            '[{"instruction": 3, "output": "x"}]',
            "number.json: record 1: field 'instruction': expected a string, got int",
        ),
        (
            "object.json",
            '{"instruction": "a", "output": "b"}',
            "object.json: expected a JSON list of records, got dict",
        ),
        ("unknown.jsonl", '{"question": "a", "answer": "b"}\n', "unknown.jsonl:1: no known fields"),
        (
            "allempty.jsonl",
            '{"instruction": "", "output": ""}\n' * 3,
            "allempty.jsonl: no usable records (3 empty records)",
        ),
        ("cols.csv", "question,answer\nq,a\n", "cols.csv:1: CSV header needs columns instruction and output"),
        (
            "latin1.jsonl",
            '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"),
            "latin1.jsonl: not UTF-8 text",
        ),
        ("scalar.jsonl", "42\n", "scalar.jsonl:1: expected a JSON object, got int"),
        ("data.txt", "hello", "data.txt: unsupported file type '.txt'"),
        (
            "badrole.jsonl",
            '{"messages": [{"role": "bot", "content": "x"}]}\n',
            "badrole.jsonl:1: field 'messages[0].role': role must be one of",
        ),
    ],
)
def test_broken_files_give_one_line_naming_file_line_and_field(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as error:
        load_data_file(str(path))
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path)) and message in text, text


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_data_file(str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="is a directory"):
        load_data_file(str(tmp_path))


def test_real_shared_files_load(shared_data):
    assert len(load_data_file(str(shared_data / "gpteacher_toolformer_dolly_format.jsonl")).records) > 7000
    assert len(load_data_file(str(shared_data / "gsm8k_train_alpaca.json")).records) == 7473
