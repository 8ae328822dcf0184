"""Refuse a run that cannot do what was asked, in one line, before any model or data is loaded.

Each check here stands for a run that used to exit 0 having done nothing, train on garbage, write into the
wrong folder, or fail minutes later with a traceback. :func:`warn_if_longer_than_model` needs the model's
config and runs once it is read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetuning.errors import UserError
from finetuning.model.loading import local_model_directory

logger = logging.getLogger("finetuning")

LENGTH_FIELDS = ("max_seq_length", "max_source_length", "max_target_length")


def check_run(model_args: Any, data_args: Any, training_args: Any) -> None:
    """The one-line refusals of finetuning/training/checks.py, for both fine-tune scripts."""
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise UserError("nothing to do: pass --do_train, --do_eval or --do_predict")
    for name in LENGTH_FIELDS:
        value = getattr(data_args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name}: must be a positive number of tokens, got {value}")
    for name in ("model_name_or_path", "tokenizer_name", "config_name"):
        value = getattr(model_args, name)
        if value:
            local_model_directory(value, name)
    model_path = model_args.model_name_or_path
    output_dir = Path(training_args.output_dir).expanduser().resolve()
    if training_args.do_train and model_path and Path(model_path).expanduser().resolve() == output_dir:
        raise UserError(
            "is the base model's folder: training there would overwrite the model it starts from",
            path=training_args.output_dir,
            field="output_dir",
        )


def warn_if_longer_than_model(config: Any, max_length: int) -> None:
    """One warning when --max_seq_length exceeds the positions the model was trained with."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and max_length > limit:
        logger.warning(
            "--max_seq_length %d is longer than the model's %d positions: longer samples may train on garbage",
            max_length,
            limit,
        )
