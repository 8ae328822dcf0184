"""Unit tests of finetuning/inference/run_files.py: where an adapter's base is found (never on the hub) and how
a run is prompted (its saved rendering, or the flags)."""

from __future__ import annotations

import json
import logging

import pytest

from finetuning.data.templates import Rendering, get_template, save_rendering
from finetuning.errors import UserError
from finetuning.inference.run_files import locate_adapter_base, resolve_rendering


def make_adapter(root, base_name: str):
    adapter = root / "runs" / "run1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base_name}))
    return adapter


def test_a_relative_base_is_found_from_the_folders_above_the_adapter(tmp_path, monkeypatch):
    (tmp_path / "demo_output" / "tiny-llama").mkdir(parents=True)
    adapter = make_adapter(tmp_path, "demo_output/tiny-llama")
    monkeypatch.chdir(adapter)  # inference runs elsewhere than training did
    assert locate_adapter_base("demo_output/tiny-llama", adapter) == str(tmp_path / "demo_output" / "tiny-llama")


def test_a_base_that_is_not_here_fails_at_once_naming_the_flag(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    adapter = make_adapter(tmp_path, "demo_output/tiny-llama")
    monkeypatch.chdir(adapter)  # not the checkout, where `make demo` leaves a demo_output/tiny-llama
    with pytest.raises(UserError) as error:
        locate_adapter_base("demo_output/tiny-llama", adapter)
    assert error.value.field == "base_model_path"
    assert "'demo_output/tiny-llama'" in str(error.value) and "pass --base_model_path" in str(error.value)


def test_a_hub_base_in_the_local_cache_loads_from_its_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    cached = {("meta-llama/Llama-2-7b-hf", "config.json"): str(snapshot / "config.json")}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda name, file, **_: cached.get((name, file)))
    adapter = make_adapter(tmp_path, "meta-llama/Llama-2-7b-hf")
    assert locate_adapter_base("meta-llama/Llama-2-7b-hf", adapter) == str(snapshot)


def test_training_stores_the_base_as_an_absolute_path(tiny_model, monkeypatch):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from finetuning.model.peft_setup import apply_peft

    base = tiny_model("llama")
    monkeypatch.chdir(base.parent)
    model = AutoModelForCausalLM.from_pretrained(base.name)  # named relative to the working directory
    wrapped = apply_peft(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert wrapped.peft_config["default"].base_model_name_or_path == str(base.resolve())


def test_a_chat_trained_run_is_prompted_as_chat_unless_a_template_is_asked_for(tmp_path, caplog):
    save_rendering(tmp_path, Rendering(get_template("alpaca"), "chatml", chat=True))
    assert resolve_rendering(None, None, str(tmp_path)) == Rendering(get_template("alpaca"), "chatml", chat=True)
    with caplog.at_level(logging.WARNING, logger="finetuning"):
        assert resolve_rendering("plain", None, str(tmp_path)) == Rendering(get_template("plain"), "chatml")
    assert "the model learned: the 'chatml' chat template" in caplog.text


def test_chat_template_flag_prompts_instructions_as_chat(tmp_path):
    save_rendering(tmp_path, Rendering(get_template("alpaca")))
    assert resolve_rendering(None, "llama3", str(tmp_path)) == Rendering(get_template("alpaca"), "llama3", True)
    assert resolve_rendering(None, "tokenizer", str(tmp_path)) == Rendering(get_template("alpaca"), None, True)
    assert resolve_rendering(None, None, str(tmp_path)).chat is False
    with pytest.raises(UserError, match="unknown chat template 'nope'"):
        resolve_rendering(None, "nope", str(tmp_path))
