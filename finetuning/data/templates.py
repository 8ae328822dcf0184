"""Prompt templates: the one place that says how an instruction record becomes model input.

Training and inference both render prompts here, and training saves the template's name next to the model
(``prompt_template.json``), so a model is always queried the way it was taught.
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


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise UserError(f"unknown prompt template '{name}' (known: {known})", field="prompt_template") from None


def save_template_name(output_dir: str | Path, name: str, chat_template: str | None = None) -> None:
    """Record the template next to the model so inference renders prompts the same way."""
    payload = {"prompt_template": name, "chat_template": chat_template}
    (Path(output_dir) / TEMPLATE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load_template_name(model_dir: str | Path) -> str | None:
    """The template a model was trained with, or None for a model this project did not train."""
    path = Path(model_dir) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["prompt_template"]
    except (ValueError, KeyError, TypeError):
        raise UserError("cannot read the saved prompt template", path=str(path)) from None
