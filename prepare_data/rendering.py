"""Render a training record as the text the model is trained on, to measure how long it really is.

A record's length in the file says little: training wraps it in a prompt template, and that wrapping is what
``--max_seq_length`` cuts. :func:`render_example` is the only place ``inspect_data.py`` renders records, so
following a change of the shared templates (``finetuning/data/templates.py``) means changing it alone.
"""

from __future__ import annotations

from typing import Any

from finetuning.data.templates import get_template


def render_example(record: dict[str, Any], template: str = "alpaca") -> tuple[str, str]:
    """Split a record into (prompt, response) as rendered for training; their concatenation is the sample.

    Instruction records use the shared prompt template (Alpaca by default). Chat records are rendered by the
    tokenizer's chat template in training, which is not known here; every turn is rendered as a ``### Role:``
    block instead, with the last assistant message as the response, which is close in length.
    """
    if "messages" in record:
        messages = record["messages"]
        last = max(index for index, message in enumerate(messages) if message["role"] == "assistant")
        prompt = "".join(
            f"### {message['role'].capitalize()}:\n{message['content']}\n\n" for message in messages[:last]
        )
        return f"{prompt}### Assistant:\n", messages[last]["content"]
    return get_template(template).render(record["instruction"], record["input"]), record["output"]
