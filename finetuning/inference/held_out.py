"""``--do_predict`` of the fine-tune scripts: answer the held-out records with the model just trained, through
the very :class:`~finetuning.inference.generation.Generator` that ``inference.py`` uses, and score the answers.

The entry scripts call this (training must not import inference): it writes ``predictions.jsonl`` (each record
plus its ``prediction``) to the output directory and returns ``predict_*`` metrics: exact match and ROUGE-1/2/L
against the records' answers, and generation speed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetuning.data.records import Record
from finetuning.data.templates import Rendering
from finetuning.inference.generation import Generator, build_generation_config
from finetuning.inference.modes import predict_file

logger = logging.getLogger("finetuning")

PREDICTIONS_FILE = "predictions.jsonl"


def predict_and_save(
    trainer: Any, rendering: Rendering, records: list[Record], *, max_new_tokens: int, num_beams: int | None
) -> dict[str, float]:
    """``--do_predict`` after training: on the main process, under the run's mixed precision, answer and score
    ``records`` with ``trainer.model``; the metrics go to predict_results.json, as the Trainer's own do."""
    if not trainer.is_world_process_zero():
        return {}
    with trainer.accelerator.autocast():
        metrics = predict_held_out(
            trainer.model,
            trainer.processing_class,
            rendering,
            records,
            trainer.args.output_dir,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams or 1,
            batch_size=trainer.args.per_device_eval_batch_size,
        )
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics, combined=False)
    return metrics


def predict_held_out(
    model: Any,
    tokenizer: Any,
    rendering: Rendering,
    records: list[Record],
    output_dir: str,
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batch_size: int = 8,
) -> dict[str, float]:
    """Greedy (or beam) answers to ``records``, saved and scored; returns the ``predict_*`` metrics."""
    config = build_generation_config(
        model, tokenizer, max_new_tokens=max_new_tokens, num_beams=num_beams, chat_template=rendering.chat_template
    )
    generator = Generator(model, tokenizer, config, rendering)
    model.eval()
    output = Path(output_dir) / PREDICTIONS_FILE
    result = predict_file(generator, [(dict(record), record) for record in records], str(output), batch_size)
    logger.info("%s", result.format(str(output)))
    metrics: dict[str, float] = {"predict_samples": result.records, "predict_empty_answers": result.empty}
    metrics |= {f"predict_{name}": value for name, value in result.scores.items()}
    metrics["predict_new_tokens_per_second"] = round(result.new_tokens / result.seconds, 2) if result.seconds else 0.0
    return metrics
