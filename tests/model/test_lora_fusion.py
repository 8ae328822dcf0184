"""The project's own LoRA path (finetuning/model/lora_fusion.py) and loss (chunked_loss.py) against PEFT and
autograd in float32: every lever changes results only by rounding."""

from __future__ import annotations

import pytest
import torch
from test_acceleration import batch, lora_model, loss_and_grads, relative_error

from finetuning.model.lora_fusion import SharedDown, fuse_lora_updates, lora_update_function


@pytest.mark.parametrize(("shared_down", "function"), [(True, True), (True, False), (False, True)])
def test_loss_and_every_gradient_equal_peft_in_float32(tiny_tokenizer, shared_down, function):
    inputs = batch(tiny_tokenizer)
    plain = lora_model(tiny_tokenizer, torch.float32).train()
    fast = lora_model(tiny_tokenizer, torch.float32).train()
    assert fuse_lora_updates(fast, shared_down=shared_down, function=function) == 14
    plain_loss, plain_grads = loss_and_grads(plain, inputs, autocast=False)
    fast_loss, fast_grads = loss_and_grads(fast, inputs, autocast=False)
    assert fast_loss == pytest.approx(plain_loss, abs=1e-6)
    assert len(plain_grads) == 28 and fast_grads.keys() == plain_grads.keys()
    assert relative_error(fast_grads, plain_grads) < 1e-5


def test_q_k_v_and_gate_up_take_one_down_projection_each(tiny_tokenizer, monkeypatch):
    model = lora_model(tiny_tokenizer, torch.float32).train()
    fuse_lora_updates(model, shared_down=True, function=True)
    rows = []
    real_linear = torch.nn.functional.linear

    def counting_linear(x, weight, bias=None):
        rows.append(weight.shape[0])
        return real_linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    loss_and_grads(model, batch(tiny_tokenizer), autocast=False)
    rank = 4
    down_rows = sorted(r for r in rows if r % rank == 0 and r <= 3 * rank)
    # per decoder layer: one 3r-row GEMM (q, k, v), one 2r-row GEMM (gate, up), o_proj and down_proj alone
    assert down_rows == sorted([3 * rank, 2 * rank, rank, rank] * 2)


def test_shared_down_projection_recomputes_for_a_new_input_and_forgets_the_old_one():
    layers = [torch.nn.Module() for _ in range(2)]
    for layer, rank in zip(layers, (2, 3), strict=True):
        layer.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(5, rank, bias=False)})
    group = SharedDown(layers, "default")
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(group.down(0, x), layers[0].lora_A["default"](x))
    assert group.x is x  # kept for the sibling
    assert torch.allclose(group.down(0, y), layers[0].lora_A["default"](y))  # called again: a new input
    assert torch.allclose(group.down(1, y), layers[1].lora_A["default"](y))
    assert group.x is None and group.parts == []


def test_lora_function_passes_gradcheck_in_double():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.double)
    bias = torch.randn(4, dtype=torch.double)
    down = torch.randn(2, 3, 2, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.double, requires_grad=True)
    function = lora_update_function()
    assert torch.autograd.gradcheck(lambda x, d, b: function.apply(x, weight, bias, d, b, 0.5), (x, down, b))
    expected = x @ weight.T + bias + 0.5 * down @ b.T
    assert torch.allclose(function.apply(x, weight, bias, down, b, 0.5), expected)


def test_fast_path_under_bf16_autocast_stays_as_close_to_float32_as_peft(tiny_tokenizer):
    import copy

    inputs = batch(tiny_tokenizer)
    plain = lora_model(tiny_tokenizer, torch.bfloat16).train()
    reference = copy.deepcopy(plain).float()
    fast = copy.deepcopy(plain)
    fuse_lora_updates(fast, shared_down=True, function=True)
    reference_loss, reference_grads = loss_and_grads(reference, inputs, autocast=False)
    plain_loss, plain_grads = loss_and_grads(plain, inputs, autocast=True)
    fast_loss, fast_grads = loss_and_grads(fast, inputs, autocast=True)
    assert abs(fast_loss - reference_loss) <= abs(plain_loss - reference_loss) + 1e-2
    assert relative_error(fast_grads, reference_grads) <= 1.5 * relative_error(plain_grads, reference_grads)


@pytest.mark.parametrize("num_items", [None, 7])
def test_chunked_cross_entropy_gives_the_plain_loss_and_gradients_in_float32(tiny_tokenizer, monkeypatch, num_items):
    from finetuning.model import chunked_loss

    monkeypatch.setattr(chunked_loss, "CHUNK_TOKENS", 5)  # several chunks, the last one short
    inputs = batch(tiny_tokenizer)
    inputs["labels"] = inputs["labels"].clone()
    inputs["labels"][0, :4] = -100  # a masked prompt
    if num_items is not None:
        inputs["num_items_in_batch"] = torch.tensor(num_items)
    plain = lora_model(tiny_tokenizer, torch.float32).train()
    chunked = lora_model(tiny_tokenizer, torch.float32).train()
    assert chunked_loss.chunk_cross_entropy(chunked)
    plain_loss, plain_grads = loss_and_grads(plain, inputs, autocast=False)
    chunked_loss_value, chunked_grads = loss_and_grads(chunked, inputs, autocast=False)
    assert chunked_loss_value == pytest.approx(plain_loss, abs=1e-6)
    assert relative_error(chunked_grads, plain_grads) < 1e-5
    with torch.no_grad():  # evaluation keeps the logits
        assert chunked.eval()(**batch(tiny_tokenizer)).logits is not None


@pytest.mark.slow
def test_decoder_layers_compiled_with_the_fast_lora_path_give_the_eager_loss_and_gradients(tiny_tokenizer):
    from types import SimpleNamespace

    from finetuning.model.acceleration import optimize_for_training
    from finetuning.model.levers import SpeedLevers

    torch._dynamo.reset()
    inputs = batch(tiny_tokenizer)
    eager = lora_model(tiny_tokenizer, torch.float32).train()
    fuse_lora_updates(eager)
    compiled = lora_model(tiny_tokenizer, torch.float32).train()
    args = SimpleNamespace(
        bf16=False,
        fp16=False,
        use_cpu=True,
        use_liger_kernel=False,
        world_size=1,
        ddp_find_unused_parameters=None,
        torch_compile=False,
    )
    applied = optimize_for_training(compiled, args, enabled=True, levers=SpeedLevers(compile_layers_cpu=True))
    assert "torch.compile per decoder layer" in applied
    eager_loss, eager_grads = loss_and_grads(eager, inputs, autocast=False)
    compiled_loss, compiled_grads = loss_and_grads(compiled, inputs, autocast=False)
    assert compiled_loss == pytest.approx(eager_loss, abs=1e-5)
    assert relative_error(compiled_grads, eager_grads) < 1e-4


@pytest.mark.slow
def test_per_layer_compile_traces_one_graph_for_all_layers_without_graph_breaks(tiny_tokenizer, monkeypatch):
    """Dynamo only (eager backend, seconds): the project's LoRA path traces whole, and the 12 layers share the
    graphs (one for the first layer, whose input needs no gradient, one for the rest) instead of recompiling per
    layer past dynamo's limit of 8, which a KV cache in the training forward would cause."""
    import peft
    import transformers
    from torch._dynamo.utils import counters

    from finetuning.model.acceleration import compile_decoder_layers
    from finetuning.model.tiny import build_config

    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: real_compile(self, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer, layers=12))
    config = peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config).train()
    fuse_lora_updates(model)
    assert compile_decoder_layers(model) == 12
    for _ in range(2):
        loss_and_grads(model, batch(tiny_tokenizer), autocast=True)
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"]


def test_lora_with_a_bias_on_b_keeps_peft_forward(tiny_tokenizer):
    import peft
    import transformers

    from finetuning.model.tiny import build_config

    def model():
        torch.manual_seed(0)
        base = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer))
        config = peft.LoraConfig(
            r=4, target_modules="all-linear", init_lora_weights=False, lora_bias=True, task_type="CAUSAL_LM"
        )
        return peft.get_peft_model(base, config).train()

    plain, fast = model(), model()
    for module in [*plain.modules(), *fast.modules()]:
        if hasattr(module, "lora_B"):  # PEFT starts the bias at zero: make it count
            torch.nn.init.constant_(module.lora_B["default"].bias, 0.1)
    fuse_lora_updates(fast)
    plain_loss, _ = loss_and_grads(plain, batch(tiny_tokenizer), autocast=False)
    fast_loss, _ = loss_and_grads(fast, batch(tiny_tokenizer), autocast=False)
    assert fast_loss == pytest.approx(plain_loss, abs=1e-6)
