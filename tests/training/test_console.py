"""finetuning/training/console.py: step numbers in log lines, the distributed-run line, the resumed progress
bar, and the warning when a run resumes with other settings."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import torch

from finetuning.training.console import (
    StepPrinterCallback,
    StepProgressCallback,
    changed_settings,
    log_distributed_layout,
    warn_if_resumed_differently,
)


def state(**values):
    return SimpleNamespace(**({"is_world_process_zero": True, "global_step": 0, "max_steps": 4000} | values))


def test_log_lines_start_with_the_step(capsys):
    StepPrinterCallback().on_log(None, state(global_step=5, is_local_process_zero=True), None, logs={"loss": 0.5})
    assert capsys.readouterr().out.strip() == "{'step': 5, 'loss': '0.5'}"


def test_a_resumed_progress_bar_starts_at_the_resumed_step():
    callback = StepProgressCallback()
    resumed = state(global_step=800)
    callback.on_train_begin(None, resumed, None)
    assert (callback.training_bar.initial, callback.training_bar.n) == (800, 800)  # rates count from here
    resumed.global_step = 801
    callback.on_step_end(None, resumed, None)
    assert callback.training_bar.n == 801
    callback.on_train_end(None, resumed, None)


def test_a_distributed_run_says_how_it_is_laid_out(monkeypatch, caplog):
    launch = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    for name, value in (launch | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}).items():
        monkeypatch.setenv(name, value)
    args = SimpleNamespace(world_size=2, process_index=0, ddp_backend="gloo", device=torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="finetuning"):
        log_distributed_layout(args)
        log_distributed_layout(SimpleNamespace(world_size=1, process_index=0))  # a single process: nothing
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("distributed")]
    assert lines == ["distributed run: 2 processes (2 on this node), backend gloo, launched by torchrun, device cpu"]


def test_resuming_with_other_settings_names_each_difference(tmp_path, caplog):
    saved = {"learning_rate": 1e-4, "max_seq_length": 512, "dataset_concatenation": False, "output_dir": "a"}
    (tmp_path / "finetune_args.json").write_text(json.dumps(saved))
    now = saved | {"learning_rate": 2e-4, "dataset_concatenation": True, "output_dir": "b", "report_to": ["none"]}
    assert changed_settings(saved, now) == ["dataset_concatenation: False -> True", "learning_rate: 0.0001 -> 0.0002"]
    with caplog.at_level(logging.WARNING, logger="finetuning"):
        warn_if_resumed_differently(tmp_path / "finetune_args.json", now)
        warn_if_resumed_differently(tmp_path / "finetune_args.json", saved)  # the same settings: no warning
        warn_if_resumed_differently(tmp_path / "missing.json", now)  # nothing saved to compare with
    assert [record.getMessage() for record in caplog.records] == [
        "resuming with settings that differ from the checkpoint's run: dataset_concatenation: False -> True; "
        "learning_rate: 0.0001 -> 0.0002"
    ]
