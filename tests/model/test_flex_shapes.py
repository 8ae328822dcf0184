"""FlexAttention compiled statically per row length (finetuning/model/flex_shapes.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_a_second_row_length_compiles_a_static_kernel_instead_of_a_dynamic_recompile(tiny_tokenizer, monkeypatch):
    """transformers' own compile turns the second length into a dynamic-shape recompile (which on the CPU does
    not even build); per-shape static compiles give each length its own kernel and the same loss as SDPA.
    FlexAttention has no CPU backward, so this runs the forward."""
    import transformers

    from finetuning.model.flex_shapes import compile_flex_attention_per_shape
    from finetuning.model.tiny import build_config

    torch._dynamo.reset()
    compiled = []
    real_compile = torch.compile

    def recording_compile(function, **options):
        compiled.append((function.__name__, options.get("dynamic")))
        return real_compile(function, **options)

    monkeypatch.setattr(torch, "compile", recording_compile)
    with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default; the config is restored after it
        assert compile_flex_attention_per_shape() and compile_flex_attention_per_shape()  # once, then a no-op
        assert torch._dynamo.config.recompile_limit >= 32  # 4 lengths x train/eval x a short last batch
    assert compiled == [("flex_attention", False), ("create_block_mask", False)]
    torch.manual_seed(0)
    config = build_config("llama", tiny_tokenizer)
    flex = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention").eval()
    sdpa = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(flex.state_dict())
    for length in (128, 256):
        ids = torch.randint(4, config.vocab_size, (2, length))
        positions = torch.cat([torch.arange(length // 2 - 5), torch.arange(length // 2 + 5)]).repeat(2, 1)
        batch = {"input_ids": ids, "labels": ids, "position_ids": positions, "use_cache": False}
        with torch.no_grad():
            assert flex(**batch).loss.item() == pytest.approx(sdpa(**batch).loss.item(), abs=1e-4)
