"""Which model arguments are folders: one rule for the fine-tune scripts and inference.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetuning.errors import UserError
from finetuning.model.loading import local_model_directory


def test_owner_slash_name_is_left_to_the_hub_and_an_existing_folder_is_returned(tmp_path, monkeypatch):
    assert local_model_directory("meta-llama/Llama-2-7b-hf", "model_name_or_path") is None
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # a relative folder that exists wins over the hub id it looks like
    assert local_model_directory("org/model", "model_name_or_path") == Path("org/model")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("my-model", "my-model: field 'base_model_path': no such model directory (hub models are named owner/name)"),
        ("./out/run", "./out/run: field 'base_model_path': no such model directory"),
        ("runs/a/final", "runs/a/final: field 'base_model_path': no such model directory"),
    ],
)
def test_anything_else_must_be_a_folder_and_fails_with_one_line(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        local_model_directory(name, "base_model_path")
    assert str(raised.value) == message
