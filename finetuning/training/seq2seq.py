"""What training does differently for encoder-decoder models (T5, Flan-T5, BART): flags, loss and ROUGE.

Their data side (separate encoder and decoder truncation, batches with decoder labels) is
:mod:`finetuning.data.seq2seq`; this module settles the seq2seq flags against the model, picks the Trainer
and scores generated text with ROUGE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetuning.data.samples import IGNORE_INDEX
from finetuning.data.scoring import score_answers
from finetuning.errors import UserError

logger = logging.getLogger(__name__)


def decode_ids(tokenizer: Any, ids: Any) -> list[str]:
    """Texts of a batch of generated ids or labels, with the trainer's -100 padding and special tokens dropped."""
    import numpy as np

    ids = np.asarray(ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


@dataclass
class RougeMetrics:
    """``compute_metrics`` for ``--predict_with_generate``: ROUGE-1/2/L F1 (x100) of generated text.

    The predictions are generated ids, never arg-max logits, so the scores are what a user of the model sees;
    ``rouge-score`` runs offline, where ``evaluate``'s rouge would fetch its script from the hub.
    ``gen_len`` is the mean number of generated tokens, which shows a model that never stops.
    """

    tokenizer: Any

    def __call__(self, evaluation: Any) -> dict[str, float]:
        import numpy as np

        predictions = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        generated = decode_ids(self.tokenizer, predictions)
        references = decode_ids(self.tokenizer, evaluation.label_ids)
        metrics = score_answers(generated, references)
        special = set(self.tokenizer.all_special_ids)
        lengths = [sum(1 for token in row if token >= 0 and token not in special) for row in np.asarray(predictions)]
        metrics["gen_len"] = round(float(np.mean(lengths)), 4)
        return metrics


def seq2seq_trainer_class() -> type:
    """``Seq2SeqTrainer`` with generation under the run's mixed precision, like every other forward pass.

    accelerate applies autocast by wrapping the prepared model's ``forward``, which ``generate`` goes around.
    Without autocast, ``--predict_with_generate`` under ``--bf16`` would run a bfloat16 base against float32
    adapters; with ``--auto_optimize``'s LoRA speed-up (no per-layer float32 cast) that fails outright.
    (A function, so that importing this module stays free of ``transformers``.)
    """
    from transformers import Seq2SeqTrainer

    class MixedPrecisionSeq2SeqTrainer(Seq2SeqTrainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
            with self.accelerator.autocast():
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)

    return MixedPrecisionSeq2SeqTrainer


def token_count_loss(model: Any) -> Callable[..., Any]:
    """The loss for the Trainer's ``compute_loss_func``: cross-entropy summed over the supervised target tokens
    and divided by their count over every micro-batch of the optimizer step on every rank (the Trainer's
    ``num_items_in_batch``), as the causal path's models do. T5 and BART return a per-batch mean instead, so a
    short target weighed as much as a long one and 2 ranks (or 2 accumulation steps) did not train what one
    process with the same global batch trains. The Trainer then neither divides by the accumulation steps nor
    skips multiplying by the world size; ``num_items_in_batch`` is kept out of the model's ``forward``, which
    would ignore it (``accepts_loss_kwargs``, read through PEFT wrappers). Needs the decoder inputs in the batch
    (:class:`finetuning.data.seq2seq.Seq2SeqPaddingCollator`): the Trainer hands labels to this function only.
    """
    model.accepts_loss_kwargs = False
    return summed_over_supervised_tokens


def decoder_start_token_id(model: Any) -> int:
    """The token the decoder inputs start with (T5: the pad id; BART: ``</s>``), as the model itself reads it."""
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "decoder_start_token_id", None)
        if value is not None:
            return value
    raise UserError(
        f"'{model.config.model_type}' names no decoder_start_token_id: its decoder inputs cannot be built",
        field="model_name_or_path",
    )


def summed_over_supervised_tokens(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy over the labels that are not ignored, divided by ``num_items_in_batch`` (their own count
    when the Trainer gives none, as in evaluation)."""
    import torch

    logits = outputs["logits"]
    labels = labels.to(logits.device)
    total = torch.nn.functional.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(IGNORE_INDEX).sum()
    return total / count


def settle_seq2seq_arguments(model_config: Any, data_args: Any, training_args: Any) -> None:
    """Refuse what cannot work for an encoder-decoder run, warn about flags that do not apply, fill defaults."""
    if not getattr(model_config, "is_encoder_decoder", False):
        raise UserError(
            f"'{model_config.model_type}' is not an encoder-decoder model: fine-tune it with finetune_clm.py",
            field="model_name_or_path",
        )
    for name in ("max_source_length", "max_target_length"):
        if getattr(data_args, name) < 2:
            raise UserError("must be at least 2 (room for a token and EOS)", field=name)
    if data_args.dataset_concatenation:
        logger.warning(
            "--dataset_concatenation ignored: packing does not apply to encoder-decoder models, whose "
            "encoder and decoder sequences are padded separately"
        )
    if data_args.train_on_inputs:
        logger.warning("--train_on_inputs ignored: the prompt is the encoder input, which is never in the loss")
    if training_args.generation_max_length is None:
        # generate() counts the decoder start token, so this leaves room for a full-length target
        training_args.generation_max_length = data_args.max_target_length + 1


def require_instruction_records(splits: Any) -> None:
    """Chat records have no single prompt/response split for an encoder and a decoder: refuse them up front."""
    for loaded in (splits.train, splits.validation):
        if loaded is not None and any("messages" in record for record in loaded.records):
            raise UserError(
                "chat records (messages) are not supported for encoder-decoder models; use instruction "
                "records (instruction, input, output)",
                path=loaded.source,
            )
