"""The project's own LoRA forward and backward for PEFT's plain ``lora.Linear`` layers.

Three levers (finetuning/model/levers.py), each checked against PEFT in float32 (tests/model/test_lora_fusion.py):

* The update is added inside the product: ``addmm(base_output, x·Aᵀ, Bᵀ, alpha=scaling)`` instead of PEFT's
  separate scale and add, two full-size passes over each adapted layer's output fewer (each way).
* Layers that read the same input (q, k, v; gate, up) share one down-projection ``x·[A_q; A_k; A_v]ᵀ``: one
  GEMM that reads the input once instead of three skinny ones, and one GEMM each for ``dA`` and ``dx`` in
  backward (autograd's split/cat does the grouping).
* A hand-written autograd Function for ``x·Wᵀ + b + s·down·Bᵀ`` that keeps only the small ``down = x·Aᵀ`` for
  backward and computes ``dx = g·W``, ``d_down = s·g·B``, ``dB = s·gᵀ·down`` straight from the strides, no
  casts or transposed copies; its forward adds the update into the base output in place, which the
  out-of-place ``addmm`` cannot (it copies the base output first).

The fast path runs only where it reproduces PEFT exactly: one active, unmerged, plain adapter (no DoRA or other
variant), no extra call arguments, and autocast on or one dtype throughout; anything else is PEFT's own
forward, decided per call.
"""

from __future__ import annotations

import functools
from typing import Any

# Adapted layers of one module that read the same input tensor (Llama, Mistral, Qwen, Gemma naming).
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@functools.cache
def lora_update_function() -> Any:
    """The autograd Function ``(x, weight, bias, down, b, scaling) -> x·Wᵀ + bias + scaling·down·Bᵀ``.

    The frozen base weight gets no gradient; ``down`` is the caller's ``x·Aᵀ``, whose own backward (to ``A``
    and ``x``) autograd runs, grouped when the down-projection is shared.
    """
    import torch
    import torch.nn.functional as F

    class LoraUpdate(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, down: Any, b: Any, scaling: float) -> Any:
            out = F.linear(x, weight, bias)
            # in place: out-of-place addmm first copies the whole base output into a new tensor (on CUDA one
            # device-to-device copy per adapted layer, 3% of a 7B step in the profile of docs/performance.md)
            out.view(-1, out.shape[-1]).addmm_(down.reshape(-1, down.shape[-1]), b.t(), alpha=scaling)
            ctx.save_for_backward(weight, down, b)
            ctx.scaling = scaling
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            weight, down, b = ctx.saved_tensors
            flat = grad.reshape(-1, grad.shape[-1])
            grad_x = grad_bias = grad_down = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.mm(flat, weight).view(*grad.shape[:-1], weight.shape[1])
            if ctx.needs_input_grad[2]:
                grad_bias = flat.sum(0)
            if ctx.needs_input_grad[3]:
                grad_down = torch.mm(flat, b).mul_(ctx.scaling).view(down.shape)
            if ctx.needs_input_grad[4]:
                grad_b = torch.mm(flat.t(), down.reshape(-1, down.shape[-1])).mul_(ctx.scaling)
            return grad_x, None, grad_bias, grad_down, grad_b, None

    return LoraUpdate


class SharedDown:
    """One down-projection for sibling layers that are called in turn with the same input tensor.

    The first member called with a new input computes ``x·[A_1; ...; A_n]ᵀ`` and keeps the slices for the others;
    the input and slices are dropped once every member took its own.
    """

    def __init__(self, layers: list[Any], adapter: str) -> None:
        self.layers = layers
        self.adapter = adapter
        self.x: Any = None
        self.parts: list[Any] = []
        self.pending: set[int] = set()

    def down(self, index: int, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if self.x is not x or index not in self.pending:
            weights = [layer.lora_A[self.adapter].weight for layer in self.layers]
            full = F.linear(x, torch.cat(weights))
            self.parts = list(full.split([weight.shape[0] for weight in weights], dim=-1))
            self.x, self.pending = x, set(range(len(self.layers)))
        self.pending.discard(index)
        part = self.parts[index]
        if not self.pending:
            self.x, self.parts = None, []
        return part


def fuse_lora_updates(model: Any, *, shared_down: bool = True, function: bool = True) -> int:
    """Give each plain LoRA linear layer the project's forward; returns how many layers got it (once each)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    groups: dict[int, tuple[SharedDown, int]] = {}
    if shared_down:
        for parent in model.modules():
            for names in SHARED_INPUT_GROUPS:
                members = [getattr(parent, name, None) for name in names]
                group = _shareable(members, LoraLinear)
                if group is not None:
                    groups.update({id(layer): (group, index) for index, layer in enumerate(members)})
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and not getattr(module, "_fused_lora_update", False):
            module.forward = _fused_forward(module, module.forward, groups.get(id(module)), function)
            module._fused_lora_update = True
            fused += 1
    return fused


def _shareable(members: list[Any], lora_linear: type) -> SharedDown | None:
    """A SharedDown when every member is an unfused plain LoRA layer of one adapter, input size and no dropout."""
    import torch

    if not all(type(layer) is lora_linear and not getattr(layer, "_fused_lora_update", False) for layer in members):
        return None
    adapters = {tuple(layer.active_adapters) for layer in members}
    if len(adapters) != 1 or len(next(iter(adapters))) != 1:
        return None
    name = next(iter(adapters))[0]
    for layer in members:
        if name not in layer.lora_A or not isinstance(layer.lora_dropout[name], torch.nn.Identity):
            return None
        if layer.in_features != members[0].in_features:
            return None
    return SharedDown(members, name)


def _fused_forward(layer: Any, peft_forward: Any, group: tuple[SharedDown, int] | None, function: bool) -> Any:
    import torch
    import torch.nn.functional as F

    update = lora_update_function() if function else None  # resolved here, outside what torch.compile traces

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        active = layer.active_adapters
        if args or kwargs or layer.disable_adapters or layer.merged or len(active) != 1:
            return peft_forward(x, *args, **kwargs)
        name = active[0]
        if name not in layer.lora_A or name in layer.lora_variant or getattr(layer, "lora_bias", {}).get(name):
            return peft_forward(x, *args, **kwargs)  # DoRA and other variants; a bias on B
        a, b, base = layer.lora_A[name].weight, layer.lora_B[name].weight, layer.base_layer
        autocast = torch.is_autocast_enabled(x.device.type)
        if not autocast and not (x.dtype == a.dtype == b.dtype == base.weight.dtype):
            return peft_forward(x, *args, **kwargs)
        if group is not None and group[0].adapter == name:
            down = group[0].down(group[1], x)
        else:
            down = F.linear(layer.lora_dropout[name](x), a)
        scaling = layer.scaling[name]
        if update is not None and type(base) is torch.nn.Linear and not base.weight.requires_grad:
            dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
            bias = None if base.bias is None else base.bias.to(dtype)
            return update.apply(x.to(dtype), base.weight.to(dtype), bias, down.to(dtype), b.to(dtype), scaling)
        result = base(x)
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), b.t(), alpha=scaling)
        return flat.view(result.shape)

    return forward
