"""The run report: the loss-curve PNG holds the logged steps, the model card names the base model and metrics."""

from __future__ import annotations

import json

from PIL import Image

from finetuning.cli import parse_arguments
from finetuning.data.arguments import DataArguments
from finetuning.model.arguments import ModelArguments, PeftArguments
from finetuning.training.arguments import FinetuneTrainingArguments
from finetuning.training.report import CURVE_METADATA_KEY, write_run_report

LOG_HISTORY = [
    {"loss": 2.5, "learning_rate": 1e-4, "step": 1},
    {"loss": 2.1, "learning_rate": 7.5e-5, "step": 2},
    {"eval_loss": 2.3, "step": 2},
    {"loss": 1.9, "learning_rate": 5e-5, "step": 3},
    {"loss": 1.6, "learning_rate": 2.5e-5, "step": 4},
    {"eval_loss": 1.8, "step": 4},
    {"train_runtime": 3.0, "train_loss": 2.0, "step": 4},
]
METRICS = {"train_loss": 2.0, "train_runtime": 3.0, "epoch": 1.0, "train_samples": 24, "eval_loss": 1.8}


def arguments(tmp_path, *flags: str):
    types = (ModelArguments, DataArguments, PeftArguments, FinetuneTrainingArguments)
    return parse_arguments(types, ["--output_dir", str(tmp_path), "--model_name_or_path", "org/base", *flags])


def test_loss_curve_opens_and_holds_every_logged_step(tmp_path):
    written = write_run_report(str(tmp_path), arguments(tmp_path), METRICS, LOG_HISTORY, train_tokens=1000)
    assert [path.name for path in written] == ["loss_curve.png", "README.md"]
    with Image.open(tmp_path / "loss_curve.png") as picture:
        assert picture.format == "PNG" and picture.size[0] >= 600
        series = json.loads(picture.text[CURVE_METADATA_KEY])
    assert [step for step, _ in series["loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in series["eval_loss"]] == [2, 4]
    assert [value for _, value in series["learning_rate"]] == [1e-4, 7.5e-5, 5e-5, 2.5e-5]


def test_model_card_has_hub_front_matter_base_model_data_method_and_metrics(tmp_path):
    flags = ("--train_file", "data/train.jsonl", "--peft", "lora", "--lora_rank", "16")
    write_run_report(str(tmp_path), arguments(tmp_path, *flags), METRICS, LOG_HISTORY, train_tokens=1000)
    card = (tmp_path / "README.md").read_text()
    front = card.split("---")[1]
    assert 'base_model: "org/base"' in front and "library_name: peft" in front and '- "lora"' in front
    for row in ("| training data | data/train.jsonl |", "| training records | 24 |", "| lora_rank | 16 |"):
        assert row in card
    assert "| eval_loss | 1.8 |" in card and "| train_loss | 2.0 |" in card
    assert "| tokens/s | 333.3" in card and "peak memory" in card
    assert "![train and eval loss, learning rate](loss_curve.png)" in card


def test_no_logged_loss_means_no_picture_but_still_a_card(tmp_path):
    written = write_run_report(str(tmp_path), arguments(tmp_path), METRICS, [{"train_runtime": 1.0, "step": 0}])
    assert [path.name for path in written] == ["README.md"]
    assert "loss_curve.png" not in (tmp_path / "README.md").read_text()
