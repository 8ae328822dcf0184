"""The default speed-ups change results only by rounding, and stay correct where autocast is off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetuning.model.acceleration import fuse_lora_updates, keep_lora_inputs_in_compute_dtype, optimize_for_training


def lora_model(tiny_tokenizer, dtype, dropout=0.0):
    import peft
    import transformers

    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer), dtype=dtype)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config).eval()


def batch(tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("The capital of Norway is Oslo.")["input_ids"]])
    return {"input_ids": ids, "labels": ids}


def loss_of(model, inputs, *, autocast: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**inputs).loss.float().item()


# The adapter moves this loss by 2.1e-3 (measured: 5.9409 with it, 5.9388 without); the two bf16 paths gave
# identical losses when measured. A tenth of the effect: a path that dropped the adapter fails by 10x.
LORA_EFFECT_TOLERANCE = 2e-4


def test_bf16_base_under_autocast_gives_the_plain_paths_loss(tiny_tokenizer):
    inputs = batch(tiny_tokenizer)
    plain_model = lora_model(tiny_tokenizer, torch.bfloat16)
    plain = loss_of(plain_model, inputs, autocast=True)
    with plain_model.disable_adapter():
        without_adapter = loss_of(plain_model, inputs, autocast=True)
    assert abs(plain - without_adapter) > 5 * LORA_EFFECT_TOLERANCE  # the tolerance can see the adapter
    fast_model = lora_model(tiny_tokenizer, torch.bfloat16)
    assert keep_lora_inputs_in_compute_dtype(fast_model) == 14  # 7 linear layers x 2 decoder layers
    assert loss_of(fast_model, inputs, autocast=True) == pytest.approx(plain, abs=LORA_EFFECT_TOLERANCE)


def test_without_autocast_the_cast_stays_and_nothing_breaks(tiny_tokenizer):
    """A pure-bf16 forward (or a DataParallel replica thread, where autocast is off) still works."""
    inputs = batch(tiny_tokenizer)
    plain = loss_of(lora_model(tiny_tokenizer, torch.bfloat16), inputs, autocast=False)
    fast_model = lora_model(tiny_tokenizer, torch.bfloat16)
    keep_lora_inputs_in_compute_dtype(fast_model)
    assert loss_of(fast_model, inputs, autocast=False) == pytest.approx(plain, abs=1e-6)


def test_optimize_for_training_is_off_when_disabled_and_skips_liger_on_cpu(tiny_tokenizer):
    model = lora_model(tiny_tokenizer, torch.bfloat16)
    args = SimpleNamespace(
        bf16=True, fp16=False, use_cpu=True, use_liger_kernel=False, world_size=1, ddp_find_unused_parameters=None
    )
    assert optimize_for_training(model, args, enabled=False) == []
    assert optimize_for_training(model, args, enabled=True) == [
        "LoRA updates fused into one matrix product",
        "LoRA inputs kept in the autocast dtype",
    ]
    assert args.use_liger_kernel is False
    args.world_size = 2
    assert "DDP without the unused-parameter search" in optimize_for_training(model, args, enabled=True)
    assert args.ddp_find_unused_parameters is False


def loss_and_grads(model, inputs, *, autocast: bool, seed: int = 0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**inputs).loss
    loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.float().item(), grads


def relative_error(grads, reference):
    return max((grads[name] - ref).norm().item() / (ref.norm().item() + 1e-12) for name, ref in reference.items())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_update_matches_peft_in_float32(tiny_tokenizer, dropout):
    inputs = batch(tiny_tokenizer)
    plain = lora_model(tiny_tokenizer, torch.float32, dropout).train()
    fused = lora_model(tiny_tokenizer, torch.float32, dropout).train()
    assert fuse_lora_updates(fused) == 14 and fuse_lora_updates(fused) == 0  # once per layer
    plain_loss, plain_grads = loss_and_grads(plain, inputs, autocast=False)
    fused_loss, fused_grads = loss_and_grads(fused, inputs, autocast=False)
    assert fused_loss == pytest.approx(plain_loss, abs=1e-6)
    assert len(plain_grads) == 28 and fused_grads.keys() == plain_grads.keys()  # every LoRA A and B
    assert relative_error(fused_grads, plain_grads) < 1e-5


def test_fused_lora_update_under_bf16_autocast_is_as_close_to_float32_as_peft(tiny_tokenizer):
    """bf16 rounds the two paths differently, so each is compared with the float32 result of the same weights."""
    import copy

    inputs = batch(tiny_tokenizer)
    plain = lora_model(tiny_tokenizer, torch.bfloat16).train()
    reference = copy.deepcopy(plain).float()
    fused = copy.deepcopy(plain)
    fuse_lora_updates(fused)
    reference_loss, reference_grads = loss_and_grads(reference, inputs, autocast=False)
    plain_loss, plain_grads = loss_and_grads(plain, inputs, autocast=True)
    fused_loss, fused_grads = loss_and_grads(fused, inputs, autocast=True)
    assert abs(fused_loss - reference_loss) <= abs(plain_loss - reference_loss) + 1e-2
    assert relative_error(fused_grads, reference_grads) <= 1.5 * relative_error(plain_grads, reference_grads)


def test_fused_lora_layers_fall_back_to_peft_where_they_do_not_apply(tiny_tokenizer):
    """Adapters switched off (the base model's output) and a mixed-dtype forward without autocast."""
    inputs = batch(tiny_tokenizer)
    fused = lora_model(tiny_tokenizer, torch.float32)
    fuse_lora_updates(fused)
    with fused.disable_adapter():
        assert loss_of(fused, inputs, autocast=False) == pytest.approx(
            loss_of(fused.get_base_model(), inputs, autocast=False), abs=1e-6
        )
    plain = lora_model(tiny_tokenizer, torch.bfloat16)  # bf16 base, float32 adapters: PEFT's own casts
    mixed = lora_model(tiny_tokenizer, torch.bfloat16)
    fuse_lora_updates(mixed)
    assert loss_of(mixed, inputs, autocast=False) == loss_of(plain, inputs, autocast=False)


def test_masked_attention_avoids_cudnn_and_unmasked_attention_is_untouched(monkeypatch):
    """The guard against cuDNN's NaN attention backward (pytorch/pytorch#196678): installed once, on CUDA only,
    and the same attention whatever it routes."""
    import contextlib

    import torch.nn.attention
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from finetuning.model.acceleration import avoid_cudnn_attention_with_masks

    allowed_backends = []  # one entry per call routed through sdpa_kernel
    real_sdpa_kernel = torch.nn.attention.sdpa_kernel

    @contextlib.contextmanager
    def recording_sdpa_kernel(backends, *args, **kwargs):
        allowed_backends.append(list(backends))
        with real_sdpa_kernel(backends, *args, **kwargs):
            yield

    monkeypatch.setattr(torch.nn.attention, "sdpa_kernel", recording_sdpa_kernel)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", sdpa_attention_forward)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert avoid_cudnn_attention_with_masks() is False
    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert avoid_cudnn_attention_with_masks() is True
    guarded = AttentionInterface._global_mapping["sdpa"]
    assert guarded is not sdpa_attention_forward
    assert avoid_cudnn_attention_with_masks() is True and AttentionInterface._global_mapping["sdpa"] is guarded

    module = SimpleNamespace(is_causal=True, training=False, num_key_value_groups=1)
    query, key, value = (torch.randn(1, 2, 5, 8) for _ in range(3))
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    for attention_mask in (None, mask):
        expected, _ = sdpa_attention_forward(module, query, key, value, attention_mask)
        routed, _ = guarded(module, query, key, value, attention_mask)
        assert torch.equal(routed, expected)
    # only the masked call was restricted, and cuDNN was not among the kernels it allowed
    assert len(allowed_backends) == 1
    assert torch.nn.attention.SDPBackend.CUDNN_ATTENTION not in allowed_backends[0]
    assert torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION in allowed_backends[0]


def test_fused_lora_path_under_partial_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    """``--gradient_checkpointing --gradient_checkpointing_kwargs '{"every_n_layers": 2}'`` recomputes every other
    decoder layer in backward: the memory lever between no checkpointing and all of it (docs/performance.md). The
    recomputation runs the project's LoRA Function a second time; its gradients must not change."""
    inputs = batch(tiny_tokenizer)
    kept, recomputed = (lora_model(tiny_tokenizer, torch.float32).train() for _ in range(2))
    for model in (kept, recomputed):
        fuse_lora_updates(model)
    recomputed.activation_checkpointing_enable(every_n_layers=2)
    layers = recomputed.base_model.model.model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    forwards = [0, 0]
    for index, layer in enumerate(layers):  # the layer's own hooks stay outside the checkpoint: its MLP's run twice
        layer.mlp.register_forward_pre_hook(lambda *_, index=index: forwards.__setitem__(index, forwards[index] + 1))
    kept_loss, kept_grads = loss_and_grads(kept, inputs, autocast=False)
    loss, grads = loss_and_grads(recomputed, inputs, autocast=False)
    assert forwards == [2, 1]  # the first layer ran again in backward, the second kept its activations
    assert loss == pytest.approx(kept_loss, abs=1e-6)
    assert grads.keys() == kept_grads.keys() and len(grads) == 28
    assert relative_error(grads, kept_grads) < 1e-5
