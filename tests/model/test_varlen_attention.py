"""Packed rows through FlashAttention's variable-length kernel (finetuning/model/varlen_attention.py).

The kernel itself runs on CUDA only (bench/gpu_suite.sh checks it there against SDPA); here a reference kernel
written in the test (SDPA per sample) stands in for it, so what is tested is everything around it: where the
samples start, how (batch, heads, length, dim) tensors are flattened and put back, GQA, and which calls go to
the SDPA path instead.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import sample_records

from finetuning.data.collator import PaddingCollator
from finetuning.data.encoding import encode_instruction
from finetuning.data.templates import get_template
from finetuning.model import varlen_attention
from finetuning.model.varlen_attention import sample_boundaries


def test_samples_start_where_positions_restart_break_or_a_row_begins():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [5, 6, 7, 0, 1, 2, 3, 4]])  # row 2 starts mid-sample
    boundaries, longest = sample_boundaries(positions)
    assert boundaries.dtype == torch.int32
    assert boundaries.tolist() == [0, 3, 5, 8, 11, 16]
    assert longest == 5
    assert sample_boundaries(torch.arange(6).view(1, 6))[0].tolist() == [0, 6]
    assert sample_boundaries(torch.tensor([[0, 1, 2, 7, 8, 9]]))[0].tolist() == [0, 3, 6]  # transformers' rule


def reference_kernel(query, key, value, boundaries, longest, scale):
    """What FlashAttention's varlen kernel computes: causal attention within each [start, end) of the flat rows."""
    groups = query.shape[1] // key.shape[1]
    pieces = []
    edges = boundaries.tolist()
    assert longest == max(b - a for a, b in itertools.pairwise(edges))
    for start, end in itertools.pairwise(edges):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))
    return torch.cat(pieces, dim=1).transpose(0, 1)


@pytest.fixture
def reference_varlen(monkeypatch):
    """The CPU stands in for CUDA: the reference kernel, float32 accepted, the kernel reported available."""
    calls = []

    def kernel(*args):
        calls.append(args[3].tolist())
        return reference_kernel(*args)

    monkeypatch.setattr(varlen_attention, "flash_varlen", kernel)
    monkeypatch.setattr(varlen_attention, "kernel_supports", lambda query: True)
    monkeypatch.setattr(varlen_attention, "varlen_available", lambda: True)
    return calls


@pytest.mark.parametrize("architecture", ["llama", "mistral"])  # mistral: GQA (fewer key/value heads)
def test_packed_loss_and_gradients_equal_unpacked_through_the_varlen_path(
    architecture, reference_varlen, tiny_tokenizer
):
    import transformers

    from finetuning.data.packing import pack_batch
    from finetuning.model.tiny import build_config

    template = get_template("alpaca")
    samples = [encode_instruction(tiny_tokenizer, template, r, max_length=96).as_dict() for r in sample_records(5)]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config(architecture, tiny_tokenizer)).float()
    assert varlen_attention.use_varlen_attention(model)
    assert model.config._attn_implementation == varlen_attention.ATTENTION_NAME
    collator = PaddingCollator(pad_token_id=0)
    packed = pack_batch({k: [s[k] for s in samples] for k in ("input_ids", "labels")}, block_size=256)
    rows = [{k: packed[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed["input_ids"]))]
    assert len(rows) < len(samples)

    def summed_loss_and_grads(batches):
        model.zero_grad()
        total = 0.0
        for batch in batches:
            supervised = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**batch).loss * supervised
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in model.parameters()]

    packed_loss, packed_grads = summed_loss_and_grads([collator(rows)])
    layers = model.config.num_hidden_layers
    assert len(reference_varlen) == layers  # every layer of the packed forward went through the kernel
    assert reference_varlen[0][-1] == collator(rows)["input_ids"].numel()  # padding tail included as a segment
    # a padded batch carries a mask: the SDPA path, the kernel is not called again
    padded = collator([{k: samples[0][k][:60] for k in ("input_ids", "labels")}, samples[1]])
    assert padded["attention_mask"].eq(0).any()
    with torch.no_grad():
        through_fallback = model(**padded).loss
    assert len(reference_varlen) == layers
    model.set_attn_implementation("sdpa")  # the reference: plain SDPA, one sample a batch
    with torch.no_grad():
        assert model(**padded).loss.item() == pytest.approx(through_fallback.item(), rel=1e-6)
    unpacked_loss, unpacked_grads = summed_loss_and_grads([collator([s]) for s in samples])
    assert packed_loss == pytest.approx(unpacked_loss, rel=1e-5)
    for packed_grad, unpacked_grad in zip(packed_grads, unpacked_grads, strict=True):
        torch.testing.assert_close(packed_grad, unpacked_grad, rtol=1e-4, atol=1e-5)


def test_generation_with_a_kv_cache_takes_the_sdpa_path(reference_varlen, tiny_tokenizer):
    """After training, the same model object generates (inference in-process, --do_predict): query length 1
    against a cache must not reach the kernel, and the answer must equal plain SDPA's."""
    import transformers

    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer)).float().eval()
    prompt = torch.tensor([[1, 5, 9, 13, 17]])
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert varlen_attention.use_varlen_attention(model)
    assert model.generate(prompt, max_new_tokens=6, do_sample=False).tolist() == plain.tolist()
    assert len(reference_varlen) == model.config.num_hidden_layers  # the prompt's forward only


def test_models_without_sdpa_or_a_cuda_kernel_are_left_unchanged(tiny_tokenizer):
    import transformers

    from finetuning.model.tiny import build_config

    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer))
    assert not varlen_attention.use_varlen_attention(model)  # this machine has no CUDA
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_the_cuda_kernel_equals_the_reference_forward_and_backward():
    """The real kernel (bf16, GQA 8 query heads on 2 key/value heads, three samples and a padding tail in each of
    two rows) against the reference in float32: outputs and input gradients within bf16 rounding."""
    assert varlen_attention.varlen_available()
    torch.manual_seed(0)
    positions = torch.tensor(
        [list(range(300)) + list(range(500)) + list(range(224)), list(range(1000)) + list(range(24))]
    )
    boundaries, longest = sample_boundaries(positions.cuda())
    tokens = positions.numel()
    query, key, value = (
        torch.randn(tokens, heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for heads in (8, 2, 2)
    )
    fast = varlen_attention.flash_varlen(query, key, value, boundaries, longest, 0.125)
    grad = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, (query, key, value), grad)
    exact_inputs = [t.detach().float().requires_grad_() for t in (query, key, value)]
    exact = reference_kernel(*exact_inputs, boundaries, longest, 0.125)
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad.float())
    torch.testing.assert_close(fast.float(), exact, rtol=2e-2, atol=2e-2)
    for fast_grad, exact_grad in zip(fast_grads, exact_grads, strict=True):
        torch.testing.assert_close(fast_grad.float(), exact_grad, rtol=5e-2, atol=5e-2)
