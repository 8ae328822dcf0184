"""Small run-time behaviour of training: the max-length warning, --use_ipex without IPEX, quiet info logs."""

from __future__ import annotations

import logging

from finetuning.cli import parse_arguments
from finetuning.data.arguments import DataArguments
from finetuning.model.arguments import ModelArguments, PeftArguments
from finetuning.training.arguments import FinetuneTrainingArguments


def arguments(tmp_path, *flags: str):
    types = (ModelArguments, DataArguments, PeftArguments, FinetuneTrainingArguments)
    return parse_arguments(types, ["--output_dir", str(tmp_path), *flags])


def test_max_seq_length_over_the_models_positions_warns_once(caplog):
    from types import SimpleNamespace

    from finetuning.training.checks import warn_if_longer_than_model

    with caplog.at_level(logging.WARNING, logger="finetuning"):
        warn_if_longer_than_model(SimpleNamespace(max_position_embeddings=1024), 1024)
        warn_if_longer_than_model(SimpleNamespace(max_position_embeddings=1024), 100000)
    assert [record.getMessage() for record in caplog.records] == [
        "--max_seq_length 100000 is longer than the model's 1024 positions: longer samples may train on garbage"
    ]


def test_use_ipex_without_a_matching_ipex_is_one_warning_saying_why(caplog, monkeypatch):
    from types import SimpleNamespace

    from finetuning.launch import backends
    from finetuning.training.ipex import apply_ipex

    monkeypatch.setattr(backends, "IPEX_MODULE", "no_such_ipex_module")
    backends.maybe_import_ipex.cache_clear()
    trainer = SimpleNamespace(args=SimpleNamespace(use_ipex=True, bf16=False))
    with caplog.at_level(logging.WARNING, logger="finetuning"):
        assert apply_ipex(trainer) is False
    backends.maybe_import_ipex.cache_clear()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "--use_ipex ignored: no_such_ipex_module is not installed (optional, see "
        "requirements-intel.txt; continuing without Intel optimisations)"
    ]


def test_log_level_info_keeps_config_dumps_out(tmp_path):
    from finetuning.training.run import QUIET_BELOW_DEBUG, setup_logging

    *_, training = arguments(tmp_path, "--log_level", "info")
    setup_logging(training)
    assert all(logging.getLogger(name).getEffectiveLevel() >= logging.WARNING for name in QUIET_BELOW_DEBUG)
    assert logging.getLogger("transformers.trainer").getEffectiveLevel() == logging.INFO


def test_report_to_defaults_to_tensorboard_only_where_it_is_installed(monkeypatch):
    from finetuning.training import arguments as module

    monkeypatch.setattr(module, "tensorboard_installed", lambda: True)
    assert module._report_destinations(None) == "tensorboard"
    assert module._report_destinations("none") == "none"
    monkeypatch.setattr(module, "tensorboard_installed", lambda: False)
    assert module._report_destinations(None) == "none"


def test_an_evaluate_only_run_logs_tensorboard_events_under_the_output_dir(tmp_path, monkeypatch, tiny_model):
    """transformers' TensorBoard callback learns the output directory only when training begins: without
    prepare_trainer an evaluate-only run wrote its events into ./runs of the directory it started from."""
    from transformers import AutoModelForCausalLM, Trainer

    from finetuning.training.arguments import tensorboard_installed
    from finetuning.training.run import prepare_trainer

    if not tensorboard_installed():
        import pytest

        pytest.skip("neither tensorboard nor tensorboardX is installed")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    args = FinetuneTrainingArguments(output_dir=str(tmp_path / "out"), report_to="tensorboard")
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model("llama")), args=args)
    prepare_trainer(trainer)
    trainer.log({"eval_loss": 1.0})
    assert list((tmp_path / "out" / "runs").glob("*/events.out.tfevents.*"))
    assert not (tmp_path / "runs").exists()
