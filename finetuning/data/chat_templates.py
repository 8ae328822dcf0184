"""The named chat templates (``--chat_template NAME``): each family's Jinja text and its end-of-turn marker.

They follow the families' published templates, reduced to what fine-tuning needs (no tool calls); a named
template wins over the tokenizer's own. :mod:`finetuning.data.chat` renders and masks conversations with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetuning.data.templates import TEMPLATES
from finetuning.errors import UserError


@dataclass(frozen=True)
class ChatTemplate:
    """A named Jinja chat template; ``end_of_turn`` None: turns end with the tokenizer's EOS."""

    name: str
    jinja: str
    end_of_turn: str | None = None
    # False: BOS is prepended where the tokenizer adds it to plain text, as it is to instruction prompts.
    writes_bos: bool = False
    special_tokens: tuple[str, ...] = ()  # markers to add with --special_tokens when the vocabulary lacks them


_CHATML_TURNS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _system_in_first_turn(system: str) -> str:
    """Llama-2-chat and Mistral put the system prompt (``system``: a Jinja expression) in the first user turn."""
    return (
        f"{{% if messages and messages[0]['role'] == 'system' %}}{{% set system = {system} %}}"
        "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    )


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template
    for template in (
        ChatTemplate(
            name="chatml",
            jinja=_CHATML_TURNS,
            end_of_turn="<|im_end|>",
            special_tokens=("<|im_start|>", "<|im_end|>"),
        ),
        ChatTemplate(  # Qwen 1.5 / 2 / 2.5: ChatML, with a default system prompt when the conversation has none
            name="qwen",
            jinja="{% if not messages or messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" + _CHATML_TURNS,
            end_of_turn="<|im_end|>",
            special_tokens=("<|im_start|>", "<|im_end|>"),
        ),
        ChatTemplate(  # Llama 3 / 3.1 / 3.2 instruct (BOS is <|begin_of_text|>, which the tokenizer adds)
            name="llama3",
            jinja="{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
            " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
            end_of_turn="<|eot_id|>",
            special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        ChatTemplate(
            name="zephyr",
            jinja="{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token "
            "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        ),
        ChatTemplate(
            name="llama2_chat",
            jinja=_system_in_first_turn("'<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n'")
            + "{% for message in turns %}{% if message['role'] == 'user' %}"
            "{{ (bos_token or '') + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
            "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
            "{% endfor %}",
            writes_bos=True,
        ),
        ChatTemplate(  # Mistral / Mixtral instruct: one BOS, the answer right after [/INST], turns end with EOS
            name="mistral",
            jinja=_system_in_first_turn("messages[0]['content'] + '\\n\\n'")
            + "{% for message in turns %}{% if message['role'] == 'user' %}"
            "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
            "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
        ),
    )
}
assert not set(CHAT_TEMPLATES) & set(TEMPLATES), "chat and instruction template names must not be confused"


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(CHAT_TEMPLATES))
        hint = f" ('{name}' is an instruction template: use --prompt_template)" if name in TEMPLATES else ""
        raise UserError(f"unknown chat template '{name}' (known: {known}){hint}", field="chat_template") from None
