"""Templates and label masks: the prompt is masked exactly, the response and its EOS are supervised."""

from __future__ import annotations

import pytest

from finetuning.data.encoding import encode_causal_record, encode_instruction, encode_prompt
from finetuning.data.samples import IGNORE_INDEX, fit_to_length
from finetuning.data.templates import Rendering, get_template, load_rendering, save_rendering
from finetuning.errors import UserError

RECORD = {"instruction": "Reverse the letters of the word.", "input": "apple", "output": "elppa"}


def test_alpaca_template_with_and_without_input():
    alpaca = get_template("alpaca")
    with_input = alpaca.render("Do it.", "data")
    assert with_input.endswith("### Instruction:\nDo it.\n\n### Input:\ndata\n\n### Response:\n")
    assert "paired with an input" in with_input
    without_input = alpaca.render("Do it.", "  ")
    assert "### Input:" not in without_input and without_input.endswith("### Instruction:\nDo it.\n\n### Response:\n")
    assert alpaca.render("Do it.") == without_input  # no input by default


def test_unknown_template_is_a_user_error():
    with pytest.raises(UserError, match=r"unknown prompt template 'nope' \(known: alpaca, ") as error:
        get_template("nope")
    assert error.value.field == "prompt_template"


def test_rendering_round_trips(tmp_path):
    assert load_rendering(tmp_path) is None
    rendering = Rendering(get_template("llama2"), "chatml", chat=True)
    save_rendering(tmp_path, rendering)
    assert load_rendering(tmp_path) == rendering


def test_older_runs_saved_the_template_name_only(tmp_path):
    (tmp_path / "prompt_template.json").write_text('{"prompt_template": "plain", "chat_template": null}')
    assert load_rendering(tmp_path) == Rendering(get_template("plain"))


def test_custom_template_file_renders_and_its_text_is_saved_with_the_run(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('with_input: "Q: {instruction}\\nContext: {input}\\nA:"\nwithout_input: "Q: {instruction}\\nA:"\n')
    template = get_template(str(path))
    assert template.name == "mine" and template.render("Add.", "1 + 2") == "Q: Add.\nContext: 1 + 2\nA:"
    assert template.render("Name a color.") == "Q: Name a color.\nA:"
    save_rendering(tmp_path, Rendering(template))
    path.unlink()  # the run no longer needs the file
    assert load_rendering(tmp_path).template == template


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"with_input": "{instruction}"}', "'with_input' must use {input} and {instruction}"),
        ('{"with_input": "{instruction} {input}", "without_input": "{question}"}', "'without_input' must use"),
        ('{"with_input": "{instruction} {input}"}', "'without_input' must be a non-empty string"),
        ("[1, 2]", "expected a mapping"),
        ("{", "cannot parse"),
    ],
)
def test_bad_template_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")) as error:
        get_template(str(path))
    assert error.value.path == str(path) or str(path) in str(error.value)


def test_a_corrupt_saved_rendering_is_a_user_error(tmp_path):
    (tmp_path / "prompt_template.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the saved prompt template") as error:
        load_rendering(tmp_path)
    assert error.value.path == str(tmp_path / "prompt_template.json")


def test_labels_mask_the_prompt_exactly_and_supervise_response_and_eos(tiny_tokenizer):
    template = get_template("alpaca")
    sample = encode_instruction(tiny_tokenizer, template, RECORD, max_length=512)
    prompt_ids = encode_prompt(tiny_tokenizer, template.render(RECORD["instruction"], RECORD["input"]))
    response_ids = tiny_tokenizer(RECORD["output"], add_special_tokens=False)["input_ids"]
    assert sample.input_ids == prompt_ids + response_ids + [tiny_tokenizer.eos_token_id]
    assert sample.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tiny_tokenizer.eos_token_id]
    assert sample.input_ids[0] == tiny_tokenizer.bos_token_id and not sample.truncated
    # the decoded supervised part is exactly the response
    supervised = [label for label in sample.labels if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(supervised, skip_special_tokens=True) == RECORD["output"]


def test_eos_is_supervised_even_when_pad_is_eos(tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    sample = encode_instruction(tokenizer, get_template("alpaca"), RECORD, max_length=512)
    assert sample.labels[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id


def test_train_on_inputs_supervises_everything(tiny_tokenizer):
    sample = encode_instruction(tiny_tokenizer, get_template("alpaca"), RECORD, max_length=512, train_on_inputs=True)
    assert sample.labels == sample.input_ids


def test_truncation_keeps_bos_response_marker_and_flags_it(tiny_tokenizer):
    record = {**RECORD, "input": "word " * 200, "output": "answer " * 100}
    sample = encode_instruction(tiny_tokenizer, get_template("alpaca"), record, max_length=64)
    assert len(sample.input_ids) == 64 and sample.truncated
    assert sample.input_ids[0] == tiny_tokenizer.bos_token_id
    assert sum(label != IGNORE_INDEX for label in sample.labels) == 32  # the response keeps half the budget
    prompt_text = tiny_tokenizer.decode(sample.input_ids[: 64 - 32], skip_special_tokens=True)
    assert prompt_text.endswith("### Response:\n")


def test_fit_to_length_is_identity_when_it_fits():
    assert fit_to_length([1, 2], [3, 4], 4) == ([1, 2], [3, 4])
    assert fit_to_length([1, 2, 3, 4, 5, 6], [7, 8], 4) == ([1, 6], [7, 8])


@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("max_length", [512, 12], ids=["fits", "truncated"])
def test_an_instruction_record_reaches_the_data_set_as_encode_instruction_made_it(
    tiny_tokenizer, train_on_inputs, max_length
):
    template = get_template("alpaca")
    sample = encode_instruction(
        tiny_tokenizer, template, RECORD, max_length=max_length, train_on_inputs=train_on_inputs
    )
    encoded = encode_causal_record(
        RECORD, tokenizer=tiny_tokenizer, template=template, max_length=max_length, train_on_inputs=train_on_inputs
    )
    assert encoded == {"input_ids": sample.input_ids, "labels": sample.labels, "truncated": max_length == 12}
