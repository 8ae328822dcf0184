"""Packing: no token lost, no empty data set, and no sample attending to another (packed loss == unpacked)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import sample_records

from finetuning.data.collator import PaddingCollator
from finetuning.data.encoding import encode_instruction
from finetuning.data.packing import first_fit_decreasing, pack_batch
from finetuning.data.samples import IGNORE_INDEX
from finetuning.data.templates import get_template
from finetuning.model.packing_support import PACKING_VERIFIED_ARCHITECTURES, packing_block_size


@pytest.fixture(scope="module")
def samples(tiny_tokenizer):
    template = get_template("alpaca")
    return [
        encode_instruction(tiny_tokenizer, template, record, max_length=128).as_dict() for record in sample_records(7)
    ]


def as_columns(samples):
    return {"input_ids": [s["input_ids"] for s in samples], "labels": [s["labels"] for s in samples]}


def test_first_fit_decreasing_places_every_index_once_within_capacity():
    lengths = [5, 9, 3, 10, 1, 7, 2]
    bins = first_fit_decreasing(lengths, 10)
    assert sorted(index for members in bins for index in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 10 for members in bins)
    assert len(bins) == 4  # 37 tokens need at least 4 bins of 10
    assert len(first_fit_decreasing([4, 4, 6, 6], 10)) == 2  # longest first; in data order first fit needs 3
    with pytest.raises(ValueError, match="sample 0 has 11 tokens, more than the block size 10"):
        first_fit_decreasing([11], 10)


def test_packing_loses_no_token_keeps_the_tail_and_resets_positions(samples):
    packed = pack_batch(as_columns(samples), block_size=256)
    assert sorted(t for block in packed["input_ids"] for t in block) == sorted(
        t for s in samples for t in s["input_ids"]
    )
    assert all(len(block) <= 256 for block in packed["input_ids"])
    assert packed["length"] == [len(block) for block in packed["input_ids"]]
    assert len(packed["input_ids"]) < len(samples)  # several samples share a block
    pieces = []
    for ids, positions, labels in zip(packed["input_ids"], packed["position_ids"], packed["labels"], strict=True):
        assert len(ids) == len(positions) == len(labels)
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert starts[0] == 0
        for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
            assert positions[start:end] == list(range(end - start))  # positions restart at every sample
            assert labels[start] == IGNORE_INDEX  # a sample never predicts the next one's start
            pieces.append((ids[start:end], labels[start + 1 : end]))
    # cut at its restarts, every block gives back whole samples, each with its own labels
    assert sorted(pieces) == sorted((s["input_ids"], s["labels"][1:]) for s in samples)


def test_a_single_small_sample_still_makes_one_block(samples):
    packed = pack_batch(as_columns(samples[:1]), block_size=4096)
    assert len(packed["input_ids"]) == 1 and packed["input_ids"][0] == samples[0]["input_ids"]


def test_collator_pads_labels_by_position_and_never_from_ids(samples):
    collator = PaddingCollator(pad_token_id=samples[0]["input_ids"][-1])  # pad id == EOS id on purpose
    pair = [
        {key: sample[key][:cut] for key in ("input_ids", "labels")}
        for sample, cut in zip(samples[:2], (90, 100), strict=True)
    ]
    batch = collator(pair)
    length, longest = len(pair[0]["input_ids"]), len(pair[1]["input_ids"])
    assert length < longest and batch["input_ids"].shape[1] == longest  # padded, to the longest only
    assert batch["labels"][0].tolist()[:length] == pair[0]["labels"]  # EOS label kept
    assert set(batch["labels"][0].tolist()[length:]) == {IGNORE_INDEX}
    assert batch["attention_mask"][0].tolist() == [1] * length + [0] * (longest - length)
    packed = pack_batch(as_columns(samples), block_size=256)
    rows = [{k: packed[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed["input_ids"]))]
    packed_batch = collator(rows)
    assert "attention_mask" not in packed_batch and packed_batch["use_cache"] is False
    # a packed row of 200 tokens is padded to 256, the next multiple of 128 (few shapes for compiled kernels)
    short = collator([{key: value[:200] for key, value in rows[0].items()}])
    assert short["input_ids"].shape[1] == 256
    assert set(short["labels"][0, 200:].tolist()) == {IGNORE_INDEX}


def token_weighted_loss(model, batch) -> tuple[float, int]:
    with torch.no_grad():
        loss = model(**batch).loss.item()
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return loss * supervised, supervised


def assert_packed_equals_unpacked(model, samples, block_size=256):
    collator = PaddingCollator(pad_token_id=0)
    unpacked_sum, unpacked_count = 0.0, 0
    for sample in samples:
        total, count = token_weighted_loss(model, {**collator([sample]), "use_cache": False})
        unpacked_sum += total
        unpacked_count += count
    packed = pack_batch(as_columns(samples), block_size=block_size)
    assert len(packed["input_ids"]) < len(samples)  # really packed several samples per block
    features = [
        {k: packed[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed["input_ids"]))
    ]
    packed_sum, packed_count = token_weighted_loss(model, collator(features))
    assert packed_count == unpacked_count
    assert packed_sum / packed_count == pytest.approx(unpacked_sum / unpacked_count, abs=1e-5)


@pytest.mark.parametrize("architecture", PACKING_VERIFIED_ARCHITECTURES)
def test_packed_loss_equals_unpacked_loss(architecture, tiny_tokenizer, samples):
    import transformers

    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config(architecture, tiny_tokenizer)).float().eval()
    assert_packed_equals_unpacked(model, samples)


@pytest.mark.parametrize("method", ["lora", "llama_adapter"])
def test_packed_equals_unpacked_through_peft(method, tiny_tokenizer, samples):
    import peft
    import transformers

    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer)).eval()
    config = (
        peft.LoraConfig(r=4, init_lora_weights=False, task_type="CAUSAL_LM")
        if method == "lora"
        else peft.AdaptionPromptConfig(adapter_layers=1, adapter_len=4, task_type="CAUSAL_LM")
    )
    wrapped = peft.get_peft_model(model, config).eval()
    if method == "llama_adapter":  # the gate starts at zero: open it so the adapter really contributes
        for name, parameter in wrapped.named_parameters():
            if "adaption_gate" in name:
                parameter.data.fill_(0.5)
    assert_packed_equals_unpacked(wrapped, samples)


def test_the_same_samples_leak_without_the_packed_mask(tiny_tokenizer, samples):
    """Guards the guard: with a KV cache transformers drops the per-sample mask and packed != unpacked."""
    import transformers

    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer)).eval()
    packed = pack_batch(as_columns(samples), block_size=256)
    features = [
        {k: packed[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed["input_ids"]))
    ]
    batch = PaddingCollator(pad_token_id=0)(features)
    leaky = token_weighted_loss(model, {**batch, "use_cache": True})
    exact = token_weighted_loss(model, batch)
    assert abs(leaky[0] - exact[0]) / exact[1] > 1e-5  # well past the tolerance the equality tests use


@pytest.mark.parametrize(
    ("method", "architecture", "packs"),
    [
        ("lora", "llama", True),
        ("none", "gpt2", True),
        ("llama_adapter", "mistral", True),
        ("ptun", "llama", False),
        ("prefix", "llama", False),
        ("prompt", "llama", False),
        ("lora", "opt", False),
        ("lora", "mpt", False),
    ],
)
def test_packing_falls_back_where_it_would_not_be_exact(method, architecture, packs):
    data_args = SimpleNamespace(dataset_concatenation=True, max_seq_length=64)
    block = packing_block_size(data_args, SimpleNamespace(peft=method), SimpleNamespace(model_type=architecture))
    assert block == (64 if packs else None)


@pytest.mark.slow  # compiles the FlexAttention kernels (about 30 s on two cores)
def test_packed_equals_unpacked_under_flex_attention(tiny_tokenizer, samples):
    """The attention finetune_clm.py switches packed CUDA runs to (acceleration.use_flex_attention) keeps each
    sample to itself too. Checked forward on the CPU: FlexAttention has no CPU backward."""
    import transformers

    from finetuning.model.acceleration import use_flex_attention
    from finetuning.model.tiny import build_config

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(build_config("llama", tiny_tokenizer)).float().eval()
    assert use_flex_attention(model) and model.config._attn_implementation == "flex_attention"
    assert_packed_equals_unpacked(model, samples)
    gpt2 = transformers.AutoModelForCausalLM.from_config(build_config("gpt2", tiny_tokenizer))
    assert not use_flex_attention(gpt2) and gpt2.config._attn_implementation == "sdpa"  # no flex: unchanged


def test_packed_rows_are_padded_to_the_shortest_bucket_length_that_fits():
    from finetuning.data.collator import length_buckets

    assert length_buckets(2048, 4) == (512, 1024, 1536, 2048)
    assert length_buckets(1000, 3) == (384, 768, 1000)  # multiples of 128, never past the block
    collator = PaddingCollator(pad_token_id=0, lengths=length_buckets(2048, 4))
    rows = [{"input_ids": [5] * n, "labels": [5] * n, "position_ids": list(range(n))} for n in (600, 300)]
    batch = collator(rows)
    assert batch["input_ids"].shape == (2, 1024)
    assert batch["labels"][1, 300:].eq(IGNORE_INDEX).all()
    assert PaddingCollator(pad_token_id=0)(rows)["input_ids"].shape == (2, 640)  # no buckets: a multiple of 128


def test_bucket_lengths_apply_where_kernels_are_compiled_per_shape():
    from finetuning.model.acceleration import packed_row_lengths

    args = SimpleNamespace(auto_optimize=True, torch_compile=False, use_cpu=True)
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert packed_row_lengths(args, 2048, model) is None  # eager: the least padding wins
    model.config._attn_implementation = "packed_varlen"
    assert packed_row_lengths(args, 2048, model) is None  # the variable-length kernel takes any length
    model.config._attn_implementation = "flex_attention"
    assert packed_row_lengths(args, 2048, model) == (512, 1024, 1536, 2048)  # compiled per length
    model.config._attn_implementation = "sdpa"
    args.torch_compile = True
    assert packed_row_lengths(args, 2048, model) == (512, 1024, 1536, 2048)
    assert packed_row_lengths(args, None, model) is None  # not packed
    args.auto_optimize = False
    assert packed_row_lengths(args, 2048, model) is None


# Records whose answer is a function of their own prompt alone: the number to spell out is in the input.
SPELLED = ["seven two", "four four nine", "one eight", "six", "three zero five", "nine nine"]


@pytest.fixture(scope="module")
def spelling_samples(tiny_tokenizer):
    template = get_template("plain")  # short prompts: several samples per block
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    digits = {word: str(n) for n, word in enumerate(names)}
    records = [
        {"instruction": "Spell out the number.", "input": "".join(digits[w] for w in words.split()), "output": words}
        for words in SPELLED
    ]
    return [encode_instruction(tiny_tokenizer, template, record, max_length=128).as_dict() for record in records]


def answered_alone(model, sample) -> bool:
    """Greedy next-token predictions on the sample by itself (positions from 0, nothing else in view) give every
    supervised token of its answer."""
    batch = PaddingCollator(pad_token_id=0)([sample])
    with torch.no_grad():
        predicted = model(**batch).logits[0, :-1].argmax(-1)
    labels = batch["labels"][0, 1:]
    supervised = labels != IGNORE_INDEX
    return bool((predicted[supervised] == labels[supervised]).all())


def test_packed_training_memorizes_samples_that_are_then_answered_alone(tiny_tokenizer, spelling_samples):
    """Trained only on packed blocks, a tiny GPT-2 (absolute learned positions) must answer each sample alone.

    Were positions to run on across a block (and samples to see each other, as the per-sample mask is derived
    from the restarts), every sample but a block's first would be learned at positions and in a context it is
    never asked in. Measured (2 blocks of 3 samples): with restarting positions all 6 are answered after 60
    steps; with positions that keep counting only the 2 samples that open a block are.
    """
    import transformers

    from finetuning.model.tiny import build_config

    packed = pack_batch(as_columns(spelling_samples), block_size=128)
    assert len(packed["input_ids"]) < len(spelling_samples) / 2  # mostly samples that follow another
    rows = [{k: packed[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(len(packed["input_ids"]))]
    batch = PaddingCollator(pad_token_id=0)(rows)
    torch.manual_seed(0)
    config = build_config("gpt2", tiny_tokenizer)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # deterministic, and faster to memorize
    model = transformers.AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert loss.item() < 0.05, loss.item()  # memorized, as packed
    assert [answered_alone(model, sample) for sample in spelling_samples] == [True] * len(spelling_samples)
