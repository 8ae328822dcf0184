"""``--use_ipex``: the model and optimizer through ``ipex.optimize`` when a matching IPEX is installed.

Intel's extension has no release for torch >= 2.9 (requirements-intel.txt), so on this project's default torch
the flag can only say, in one warning line, why it does nothing.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

logger = logging.getLogger("finetuning")


def apply_ipex(trainer: Any) -> bool:
    """Optimize ``trainer``'s model and optimizer in place when ``--use_ipex`` asks and IPEX can; True if done."""
    if not getattr(trainer.args, "use_ipex", False):
        return False
    from finetuning.launch.backends import maybe_import_ipex

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ipex = maybe_import_ipex()
    if ipex is None:
        reason = str(caught[0].message) if caught else "intel_extension_for_pytorch is not usable"
        logger.warning("--use_ipex ignored: %s", reason)
        return False
    import torch

    trainer.create_optimizer()
    dtype = torch.bfloat16 if trainer.args.bf16 else torch.float32
    trainer.model.train()
    _, trainer.optimizer = ipex.optimize(trainer.model, optimizer=trainer.optimizer, dtype=dtype, inplace=True)
    logger.info("--use_ipex: model and optimizer passed through ipex.optimize (%s)", dtype)
    return True
