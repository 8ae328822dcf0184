"""Prompt templates: the one place that says how an instruction record becomes model input.

Training and inference both render prompts here. A template is a built-in one or a JSON/YAML file; training
saves the template (name and text), the chat template and whether the model learned chat only next to the
model (``prompt_template.json``), so a model is always queried the way it was taught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from finetuning.errors import UserError

TEMPLATE_FILE = "prompt_template.json"


@dataclass(frozen=True)
class PromptTemplate:
    """Two prompt layouts, because an empty "Input:" section reads like noise to the model."""

    name: str
    with_input: str
    without_input: str

    def render(self, instruction: str, input_text: str = "") -> str:
        """The text that precedes the response; the response follows it directly."""
        if input_text.strip():
            return self.with_input.format(instruction=instruction, input=input_text)
        return self.without_input.format(instruction=instruction)


TEMPLATES: dict[str, PromptTemplate] = {
    template.name: template
    for template in (
        PromptTemplate(
            name="alpaca",
            with_input=(
                "Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
            ),
            without_input=(
                "Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
            ),
        ),
        PromptTemplate(
            name="llama2",
            with_input="[INST] {instruction}\n\n{input} [/INST] ",
            without_input="[INST] {instruction} [/INST] ",
        ),
        PromptTemplate(
            name="plain",
            with_input="{instruction}\n{input}\n",
            without_input="{instruction}\n",
        ),
    )
}


TEMPLATE_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_FIELDS = {"with_input": {"instruction", "input"}, "without_input": {"instruction"}}


def get_template(name: str) -> PromptTemplate:
    """A built-in template by name, or a custom one from a JSON/YAML file (see :func:`load_template_file`)."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name.endswith(TEMPLATE_FILE_SUFFIXES):
        return load_template_file(name)
    known = ", ".join(sorted(TEMPLATES))
    raise UserError(
        f"unknown prompt template '{name}' (known: {known}, or a .json/.yaml file)", field="prompt_template"
    )


def load_template_file(path: str | Path) -> PromptTemplate:
    """A custom template: a mapping with ``with_input`` (``{instruction}`` and ``{input}``) and
    ``without_input`` (``{instruction}``), and an optional ``name`` (default: the file's stem)."""
    import string

    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError("no such prompt template file", path=str(path), field="prompt_template")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot parse: {error}".splitlines()[0], path=str(path), field="prompt_template") from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping with with_input and without_input", path=str(path), field="prompt_template")
    for key, allowed in _FIELDS.items():
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise UserError(f"'{key}' must be a non-empty string", path=str(path), field="prompt_template")
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise UserError(f"'{key}': {error} (write literal braces as {{{{ }}}})", path=str(path)) from None
        if used != allowed:
            wanted = " and ".join(f"{{{name}}}" for name in sorted(allowed))
            raise UserError(f"'{key}' must use {wanted} and no other field", path=str(path), field="prompt_template")
    name = str(data.get("name") or file.stem)
    return PromptTemplate(name=name, with_input=data["with_input"], without_input=data["without_input"])


@dataclass(frozen=True)
class Rendering:
    """How a trained model saw its prompts: the instruction template, the chat template (a name, or None for
    the tokenizer's own) and whether it learned chat only, in which case a plain instruction is a user turn."""

    template: PromptTemplate
    chat_template: str | None = None
    chat: bool = False


def save_rendering(output_dir: str | Path, rendering: Rendering) -> None:
    """Record the rendering next to the model (the template's text too, so a custom file need not travel)."""
    template = rendering.template
    payload = {
        "prompt_template": template.name,
        "with_input": template.with_input,
        "without_input": template.without_input,
        "chat_template": rendering.chat_template,
        "chat": rendering.chat,
    }
    (Path(output_dir) / TEMPLATE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load_rendering(model_dir: str | Path) -> Rendering | None:
    """The rendering a model was trained with, or None for a model this project did not train. Files of older
    runs name a built-in template only and say nothing of chat."""
    path = Path(model_dir) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        name = saved["prompt_template"]
        if "with_input" in saved:
            template = PromptTemplate(name, saved["with_input"], saved["without_input"])
        else:
            template = get_template(name)
        return Rendering(template, saved.get("chat_template"), bool(saved.get("chat", False)))
    except (ValueError, KeyError, TypeError, UserError):
        raise UserError("cannot read the saved prompt template", path=str(path)) from None
