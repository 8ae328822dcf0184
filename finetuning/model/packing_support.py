"""Whether a model and PEFT method can train on packed blocks exactly, or must pad instead.

Packed blocks (:mod:`finetuning.data.packing`) keep samples apart only through position ids that restart per
sample; that holds for the architectures listed here, whose attention follows them, and not for methods that
drop position ids. Everything else falls back to padding with one warning instead of training on leaked context.
"""

from __future__ import annotations

import logging
from typing import Any

from finetuning.model.peft_setup import PROMPT_LEARNING_METHODS

logger = logging.getLogger(__name__)

# Architectures whose attention masks follow restarting position ids, each proven in
# tests/test_packing.py (packed loss == unpacked loss). OPT derives positions from the attention mask and
# MPT builds its own ALiBi mask, so both would let packed samples see each other: they are padded instead.
PACKING_VERIFIED_ARCHITECTURES = ("llama", "mistral", "gpt_neox", "gptj", "bloom", "gpt2")


def packing_block_size(data_args: Any, peft_args: Any, model_config: Any) -> int | None:
    """``max_seq_length`` when samples are to be packed, ``None`` when they are padded instead.

    Packing is exact only where each sample's attention is confined to itself; elsewhere (prompt-learning
    methods, architectures not in ``PACKING_VERIFIED_ARCHITECTURES``) samples are padded, with one warning.
    """
    if not data_args.dataset_concatenation:
        return None
    if peft_args.peft in PROMPT_LEARNING_METHODS:
        reason = f"with --peft {peft_args.peft}, PEFT drops the position ids that keep packed samples apart"
    elif model_config.model_type not in PACKING_VERIFIED_ARCHITECTURES:
        reason = f"'{model_config.model_type}' attention does not follow restarting position ids"
    else:
        return data_args.max_seq_length
    logger.warning("--dataset_concatenation ignored: %s, so samples are padded instead", reason)
    return None
