"""Unit tests of finetuning/inference/generation.py and finetuning/inference/loading.py, in-process on tiny models.

The models' weights are re-drawn larger than their initialisation (see ``spiky``), so that different prompts
get different answers: on a freshly initialised tiny model every prompt gets the same answer, and "batched
equals one-by-one" would prove nothing.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import sample_records
from runs import save_lora_adapter

from finetuning.data.templates import Rendering, get_template, save_rendering
from finetuning.errors import UserError
from finetuning.inference.arguments import InferenceArguments
from finetuning.inference.generation import Generator, build_generation_config
from finetuning.inference.loading import load_for_inference
from finetuning.inference.merging import merge_and_save
from finetuning.inference.modes import read_prompt_records, write_jsonl_atomically

RECORDS = sample_records(10)


def spiky(model, seed: int = 0, std: float = 0.3):
    """Weights drawn with a large std, so the model's answers depend on the prompt."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def make_generator(path, tokenizer, **settings) -> Generator:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = AutoConfig.from_pretrained(path).is_encoder_decoder
    model = spiky((AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path))
    tokenizer.padding_side = "right" if seq2seq else "left"
    settings.setdefault("max_new_tokens", 8)
    return Generator(model, tokenizer, build_generation_config(model, tokenizer, **settings))


@pytest.fixture
def tokenizer(tiny_tokenizer):
    """A copy: generators set the padding side, which must not leak into other tests."""
    import copy

    return copy.deepcopy(tiny_tokenizer)


@pytest.fixture
def llama(tiny_model, tokenizer) -> Generator:
    return make_generator(tiny_model("llama"), tokenizer)


def one_by_one(generator: Generator, records) -> list[str]:
    return [generator.generate([record], batch_size=1)[0] for record in records]


# --- greedy decoding, batching ---------------------------------------------------------------------------


def argmax_continuation(model, prompt: list[int], steps: int, stop: int) -> list[int]:
    """Greedy decoding by hand: the most likely next token from a full forward pass over the unpadded prompt
    and what came so far (no cache, no batch, no generate())."""
    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == stop:
                break
            new.append(token)
            ids.append(token)
    return new


def test_greedy_generation_is_the_argmax_continuation_and_deterministic(llama, tokenizer):
    answers = llama.generate(RECORDS, batch_size=4)
    by_hand = [
        argmax_continuation(llama.model, llama.prompt_ids(record), 8, tokenizer.eos_token_id) for record in RECORDS
    ]
    assert answers == [tokenizer.decode(ids, skip_special_tokens=True) for ids in by_hand]
    assert len(set(answers)) > 3 and any(len(ids) == 8 for ids in by_hand)  # answers differ, some use every step
    assert llama.generate(RECORDS, batch_size=4) == answers


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "t5"])
def test_batched_generation_equals_one_by_one(tiny_model, tokenizer, architecture):
    generator = make_generator(tiny_model(architecture), tokenizer)
    lengths = {len(generator.prompt_ids(record)) for record in RECORDS}
    assert len(lengths) > 3  # prompts of different lengths: batches really are padded
    expected = one_by_one(generator, RECORDS)
    assert len(set(expected)) > 3  # answers depend on the prompt, so a mix-up would show
    for batch_size in (3, len(RECORDS)):
        assert generator.generate(RECORDS, batch_size=batch_size) == expected


def test_causal_batches_are_left_padded_with_a_mask(llama):
    batch = llama._batch_tensors([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [llama.tokenizer.pad_token_id] * 2 + [8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prompts_are_encoded_as_in_training(llama, tokenizer):
    from finetuning.data.encoding import encode_instruction
    from finetuning.data.samples import IGNORE_INDEX

    template = get_template("alpaca")
    for record in RECORDS[:4]:
        sample = encode_instruction(tokenizer, template, record, max_length=1024)
        prompt_length = sample.labels.index(next(label for label in sample.labels if label != IGNORE_INDEX))
        assert llama.prompt_ids(record) == sample.input_ids[:prompt_length]


def test_chat_prompts_are_encoded_as_in_training(llama, tokenizer):
    from finetuning.data.chat import encode_chat
    from finetuning.data.samples import IGNORE_INDEX

    llama.rendering = Rendering(get_template("alpaca"), "zephyr")
    messages = [
        {"role": "user", "content": "Translate the color 'black' into French."},
        {"role": "assistant", "content": "noir"},
        {"role": "user", "content": "And 'green'?"},
        {"role": "assistant", "content": "vert"},
    ]
    sample = encode_chat(tokenizer, messages, max_length=1024, chat_template="zephyr")
    last_answer = max(
        i
        for i, label in enumerate(sample.labels)
        if label != IGNORE_INDEX and (i == 0 or sample.labels[i - 1] == IGNORE_INDEX)
    )
    assert llama.prompt_ids({"messages": messages}) == sample.input_ids[:last_answer]
    assert llama.prompt_ids({"messages": messages[:3]}) == sample.input_ids[:last_answer]


def test_a_chat_trained_model_gets_instructions_as_a_user_turn(llama, tokenizer):
    from finetuning.data.chat import render_chat_prompt

    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    llama.rendering = Rendering(get_template("alpaca"), chat=True)  # the tokenizer's own chat template
    turn = [{"role": "user", "content": "Add the two numbers.\n\n12 + 30"}]
    expected = tokenizer(render_chat_prompt(tokenizer, turn), add_special_tokens=False)["input_ids"]
    assert llama.prompt_ids({"instruction": "Add the two numbers.", "input": "12 + 30"}) == expected
    assert llama.prompt_ids("Add the two numbers.") == llama.prompt_ids(
        {"messages": [turn[0] | {"content": "Add the two numbers."}]}
    )


# --- only new text, cut at EOS ---------------------------------------------------------------------------


def test_only_the_new_text_is_returned(llama):
    record = RECORDS[0]
    new_ids = llama.generate_ids([llama.prompt_ids(record)])[0]
    answer = llama.generate([record])[0]
    assert 0 < len(new_ids) <= 8
    assert answer == llama.tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "### Response" not in answer and record["instruction"] not in answer


def test_answers_are_cut_at_the_stop_token(llama):
    ids = llama.generate_ids([llama.prompt_ids(RECORDS[1])])[0]
    stop = ids[3]
    llama.generation_config.eos_token_id = [stop]
    cut = llama.generate_ids([llama.prompt_ids(RECORDS[1])])[0]
    assert cut == ids[: ids.index(stop)]
    assert stop not in cut


# --- sampling and the other decoding flags ---------------------------------------------------------------


def sampled(tiny_model, tokenizer, seed: int, **settings) -> list[str]:
    from transformers import set_seed

    generator = make_generator(tiny_model("llama"), tokenizer, do_sample=True, max_new_tokens=12, **settings)
    set_seed(seed)
    return generator.generate(RECORDS[:4], batch_size=4)


def test_sampling_is_reproducible_with_a_seed_and_changes_with_another(tiny_model, tokenizer):
    first = sampled(tiny_model, tokenizer, seed=1, temperature=1.5)
    assert sampled(tiny_model, tokenizer, seed=1, temperature=1.5) == first
    assert sampled(tiny_model, tokenizer, seed=2, temperature=1.5) != first


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-3}])
def test_sampling_flags_are_honoured(tiny_model, tokenizer, settings):
    """Each flag, pushed to its limit, turns sampling into greedy decoding; left out, sampling differs."""
    greedy = make_generator(tiny_model("llama"), tokenizer, max_new_tokens=12).generate(RECORDS[:4])
    assert sampled(tiny_model, tokenizer, seed=3, temperature=1.5) != greedy
    assert sampled(tiny_model, tokenizer, seed=3, **settings) == greedy


def test_repetition_penalty_and_beams_are_honoured(tiny_model, tokenizer):
    path = tiny_model("llama")
    prompts = [[*ids] for ids in map(make_generator(path, tokenizer).prompt_ids, RECORDS[:4])]
    greedy = make_generator(path, tokenizer, max_new_tokens=12)
    assert any(len(set(row)) < len(row) for row in greedy.generate_ids(prompts))  # greedy repeats itself...
    penalized = make_generator(path, tokenizer, max_new_tokens=12, repetition_penalty=1e4)
    assert all(len(set(row)) == len(row) for row in penalized.generate_ids(prompts))  # ...a huge penalty never
    beams = make_generator(path, tokenizer, max_new_tokens=12, num_beams=4)
    expected = one_by_one(beams, RECORDS[:4])
    assert expected != greedy.generate(RECORDS[:4])
    assert beams.generate(RECORDS[:4], batch_size=4) == expected


def test_model_generation_defaults_do_not_override_the_flags(llama):
    expected = llama.generate(RECORDS[:4])
    llama.model.generation_config.do_sample = True
    llama.model.generation_config.temperature = 5.0
    llama.model.generation_config.max_new_tokens = 2
    assert llama.generate(RECORDS[:4]) == expected


# --- loading, merging ------------------------------------------------------------------------------------


def load(**flags):
    """Loaded on the CPU in float32 whatever the machine has: the comparisons below are exact ones."""
    return load_for_inference(InferenceArguments(infer=True, device="cpu", **flags))


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_merged_model_equals_adapter_model(tiny_model, tmp_path):
    base_path = tiny_model("llama")
    adapter_dir = tmp_path / "adapter"
    save_lora_adapter(base_path, adapter_dir)
    save_rendering(adapter_dir, Rendering(get_template("plain")))

    with_adapter = load(peft_model_path=str(adapter_dir))  # base found through adapter_config.json
    assert with_adapter.base_path == str(base_path) and with_adapter.rendering.template.name == "plain"
    config = build_generation_config(with_adapter.model, with_adapter.tokenizer, max_new_tokens=10)
    generator = Generator(with_adapter.model, with_adapter.tokenizer, config, with_adapter.rendering)
    ids = generator.prompt_ids(RECORDS[2])
    adapter_logits, adapter_answers = logits(with_adapter.model, ids), generator.generate(RECORDS[:5])
    base = load(base_model_path=str(base_path))
    assert not torch.allclose(logits(base.model, ids), adapter_logits, atol=1e-3)  # the adapter does something

    merged_dir = merge_and_save(with_adapter, str(tmp_path / "merged"))
    names = {path.name for path in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "prompt_template.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    merged = load(base_model_path=str(merged_dir))
    assert merged.rendering.template.name == "plain"
    assert not hasattr(merged.model, "peft_config")
    torch.testing.assert_close(logits(merged.model, ids), adapter_logits, atol=1e-4, rtol=1e-4)
    merged_config = build_generation_config(merged.model, merged.tokenizer, max_new_tokens=10)
    merged_generator = Generator(merged.model, merged.tokenizer, merged_config, merged.rendering)
    assert merged_generator.generate(RECORDS[:5]) == adapter_answers


def test_prompt_learning_adapters_cannot_be_merged(tiny_model, tmp_path):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    get_peft_model(model, PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")).save_pretrained(
        tmp_path / "prompt"
    )
    loaded = load(peft_model_path=str(tmp_path / "prompt"))
    with pytest.raises(UserError, match="PROMPT_TUNING adapter cannot be merged: prompt-learning adapters"):
        merge_and_save(loaded, str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_pickled_adapters_need_allow_pickle(tiny_model, tmp_path):
    from safetensors.torch import load_file

    adapter_dir = tmp_path / "adapter"
    save_lora_adapter(tiny_model("llama"), adapter_dir)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    torch.save(weights, adapter_dir / "adapter_model.bin")
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"only a pickled adapter_model\.bin.*--allow_pickle"):
        load(peft_model_path=str(adapter_dir))
    assert load(peft_model_path=str(adapter_dir), allow_pickle=True).adapter_path == str(adapter_dir)


def test_template_comes_from_the_run_and_can_be_overridden(tiny_model, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), model_dir)
    assert load(base_model_path=str(model_dir)).rendering.template.name == "alpaca"  # not trained here: the default
    save_rendering(model_dir, Rendering(get_template("llama2")))
    assert load(base_model_path=str(model_dir)).rendering.template.name == "llama2"
    assert load(base_model_path=str(model_dir), prompt_template="plain").rendering.template.name == "plain"


def test_an_adapter_dir_given_as_base_model_path_is_loaded_as_an_adapter(tiny_model, tmp_path):
    save_lora_adapter(tiny_model("llama"), tmp_path / "adapter")
    loaded = load(base_model_path=str(tmp_path / "adapter"))
    assert loaded.adapter_path == str(tmp_path / "adapter")


# --- files and flags -------------------------------------------------------------------------------------


def test_prompt_files_need_no_answers_and_keep_every_record(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"instruction": "Name a color.", "id": 7},
        {"instruction": "", "input": ""},
        {"instruction": "Add.", "context": "1 + 2", "response": "3"},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    pairs = read_prompt_records(str(path))
    assert [raw for raw, _ in pairs] == rows
    assert [record.get("instruction") for _, record in pairs] == ["Name a color.", "", "Add.", None]
    assert pairs[2][1]["input"] == "1 + 2" and pairs[3][1] == {"messages": [{"role": "user", "content": "Hi"}]}


def test_malformed_prompt_files_give_the_training_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok"}\n{"instruction": 3}\n', encoding="utf-8")
    with pytest.raises(UserError) as error:
        read_prompt_records(str(path))
    assert str(error.value) == f"{path}:2: field 'instruction': expected a string, got int"


def test_output_is_written_atomically(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")

    def rows():
        yield {"a": 1}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl_atomically(str(target), rows())
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.jsonl"]
    write_jsonl_atomically(str(target), [{"a": 1}, {"b": "é"}])
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"infer": True, "temperature": 0.7}, "--temperature applies only when sampling: add --do_sample"),
        ({"infer": True, "top_p": 0.9, "top_k": 5}, "--top_p, --top_k apply only when sampling"),
        ({}, "nothing to do"),
        ({"input_file": "a.jsonl"}, "--input_file needs --output_file"),
        ({"input_file": "a.jsonl", "output_file": "./a.jsonl"}, "would overwrite --input_file"),
        ({"infer": True, "num_beams": 0}, "field 'num_beams': must be at least 1"),
    ],
)
def test_contradictory_flags_are_refused(flags, message):
    with pytest.raises(UserError, match=message.replace("-", r"\-")):
        InferenceArguments(base_model_path="model", **flags)
