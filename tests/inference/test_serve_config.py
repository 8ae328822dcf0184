"""``--config_file inference.yaml`` in llm-on-ray's shape becomes the flags it means; serving flags are refused
without ``--serve``; a bad file or flag is one line naming the file and the field."""

from __future__ import annotations

import pytest

from finetuning.errors import UserError
from finetuning.inference.serve_arguments import ServeArguments, expand_config_file, llm_on_ray_flags

LLM_ON_RAY = """\
port: 8080
name: my-model
route_prefix: /custom-model
num_replicas: 2
device: cpu
model_description:
  model_id_or_path: /models/base
  tokenizer_name_or_path: /models/tok
  peft_model_id_or_path: /runs/adapter
  chat_template: null
  prompt:
    intro: "A {curly} intro.\\n"
    human_id: "### Instruction:\\n"
    bot_id: "\\n### Response:\\n"
    stop_words: ["###", "</s>"]
"""


def test_llm_on_ray_file_becomes_flags_that_later_flags_override(tmp_path):
    from finetuning.cli import parse_arguments
    from finetuning.inference.arguments import InferenceArguments

    path = tmp_path / "inference.yaml"
    path.write_text(LLM_ON_RAY, encoding="utf-8")
    argv = expand_config_file(["--config_file", str(path), "--port", "9000"])
    args, serve_args = parse_arguments((InferenceArguments, ServeArguments), argv)
    assert args.serve and args.device == "cpu"
    assert (args.base_model_path, args.tokenizer_name, args.peft_model_path) == (
        "/models/base",
        "/models/tok",
        "/runs/adapter",
    )
    assert serve_args.port == 9000 and serve_args.num_replicas == 2
    assert (serve_args.served_model_name, serve_args.route_prefix) == ("my-model", "/custom-model")
    assert serve_args.stop_words == ["###", "</s>"]
    template = serve_args.prompt_template()
    assert template.render("Name a color.") == "A {curly} intro.\n### Instruction:\nName a color.\n### Response:\n"
    assert template.render("Add.", "1 + 2") == "A {curly} intro.\n### Instruction:\nAdd.\n1 + 2\n### Response:\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: 1\n", "expected a mapping with a model_description mapping"),
        ("model_description: {model_path: x}\n", "field 'model_path': unknown key"),
        ("model_description: {model_id_or_path: x}\nworkers: 2\n", "field 'workers': unknown key"),
        ("model_description: [\n", "cannot parse"),
    ],
)
def test_bad_llm_on_ray_file_is_one_line_naming_it(tmp_path, text, expected):
    path = tmp_path / "inference.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as error:
        llm_on_ray_flags(str(path))
    assert str(error.value).startswith(str(path)) and expected in str(error.value)


def test_serving_flags_without_serve_are_refused(capsys, tiny_model, monkeypatch):
    import inference
    from finetuning.errors import exit_on_user_error

    monkeypatch.delenv("FINETUNING_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(
            lambda: inference.main(["--base_model_path", str(tiny_model("llama")), "--infer", "--port", "9"])
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --port: only with --serve"


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FINETUNING_API_KEY", "from-env")
    assert ServeArguments().api_key == "from-env" and ServeArguments(api_key="flag").api_key == "flag"
    assert ServeArguments().given() == []
