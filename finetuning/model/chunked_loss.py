"""Causal-LM cross-entropy in chunks of tokens, without the full-vocabulary logits or their float32 copy.

The plain path computes ``logits = lm_head(h)`` for every token (bf16 under autocast), then
``ForCausalLMLoss`` makes a float32 copy of all of them: over a 32k vocabulary that is 4 × 512 × 32000 × 6 bytes
for one CPU rank's batch, written and read twice. Here the loss and the gradient of the hidden states are
computed in the forward pass, ``CHUNK_TOKENS`` rows at a time, with the logits of one chunk alive at once (the
method of Liger's fused linear cross-entropy, in plain PyTorch, for every device). The output layer must be
frozen (LoRA on the decoder layers, PEFT's ``all-linear``), which is the case it is applied to.
"""

from __future__ import annotations

import functools
from typing import Any

IGNORE_INDEX = -100
CHUNK_TOKENS = 1024  # float32 logits of 1024 tokens x 32k vocabulary: 131 MB


@functools.cache
def chunked_loss_function() -> Any:
    """The autograd Function ``(hidden [N, d], weight [V, d], targets [N], divisor) -> summed CE / divisor``."""
    import torch

    class ChunkedCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, divisor: Any) -> Any:
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], CHUNK_TOKENS):
                rows = slice(start, start + CHUNK_TOKENS)
                logits = torch.mm(hidden[rows], weight.t()).float()
                target = targets[rows]
                valid = target != IGNORE_INDEX
                safe = target.clamp(min=0).unsqueeze(1)
                lse = torch.logsumexp(logits, dim=1, keepdim=True)
                total += ((lse - logits.gather(1, safe)).squeeze(1) * valid).sum()
                probs = logits.sub_(lse).exp_()  # softmax, in the logits' own memory
                probs.scatter_add_(1, safe, -torch.ones_like(safe, dtype=probs.dtype))
                probs.mul_(valid.unsqueeze(1))
                grad_hidden[rows] = torch.mm(probs.to(hidden.dtype), weight)
            ctx.save_for_backward(grad_hidden, divisor)
            return total / divisor

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            grad_hidden, divisor = ctx.saved_tensors
            return grad_hidden * (grad / divisor).to(grad_hidden.dtype), None, None, None

    return ChunkedCrossEntropy


def chunked_causal_lm_loss(
    hidden: Any, weight: Any, labels: Any, num_items_in_batch: Any = None, shift_labels: Any = None
) -> Any:
    """The loss ``ForCausalLMLoss`` gives for ``hidden @ weight.T`` (same shift, ignore index and normalisation)."""
    import torch
    import torch.nn.functional as F

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    autocast = torch.is_autocast_enabled(hidden.device.type)
    dtype = torch.get_autocast_dtype(hidden.device.type) if autocast else hidden.dtype
    flat = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().float()
    else:
        divisor = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        return chunked_loss_function().apply(flat, weight.to(dtype), targets, divisor)


def chunk_cross_entropy(model: Any) -> bool:
    """Make a causal LM's training forward (with labels) compute its loss in chunks; False (unchanged) where
    the model is not a plain ``lm_head`` + ``ForCausalLMLoss`` model or its output layer is trained."""
    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head, decoder = getattr(base, "lm_head", None), getattr(base, "model", None)
    config = base.config
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad or decoder is None:
        return False
    if getattr(config, "final_logit_softcapping", None):
        return False
    if getattr(config, "loss_type", None) not in (None, "ForCausalLM"):
        return False
    plain_forward = base.forward

    @functools.wraps(plain_forward)  # the Trainer keeps only the batch columns this signature names
    def forward(*args: Any, labels: Any = None, **kwargs: Any) -> Any:
        if args or labels is None or not base.training or kwargs.get("logits_to_keep", 0):
            return plain_forward(*args, labels=labels, **kwargs)
        num_items, shift_labels = kwargs.pop("num_items_in_batch", None), kwargs.pop("shift_labels", None)
        kwargs.pop("logits_to_keep", None)
        outputs = decoder(**kwargs)
        loss = chunked_causal_lm_loss(outputs.last_hidden_state, head.weight, labels, num_items, shift_labels)
        return CausalLMOutputWithPast(loss=loss, past_key_values=outputs.past_key_values)

    base.forward = forward
    return True
