"""Multi-turn chat records to token ids and labels, with the loss on the assistant turns only.

The template is the tokenizer's own chat template or a named one of :data:`CHAT_TEMPLATES` (which wins). For
an exact mask the conversation is rendered incrementally: the text each message adds, and the generation prompt
(the assistant header) before each assistant message, are pieces tokenized separately, their ids concatenated
and checked to decode back to the whole text; subtracting the token counts of a prefix and of the whole text
drifts where texts merge at the boundary. Supervised: what the template writes for an assistant turn after its
generation prompt, through its end-of-turn marker (``<|im_end|>``, or EOS where turns end with EOS). Masked:
headers, system and user turns, and whitespace after the marker (the next prompt holds it, not the answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuning.data.chat_templates import CHAT_TEMPLATES, get_chat_template
from finetuning.data.samples import IGNORE_INDEX, EncodedSample, fit_to_length
from finetuning.errors import UserError

Message = dict[str, str]


@dataclass(frozen=True)
class _Resolved:
    source: str  # the Jinja text
    prefix: str  # put before every non-empty rendering: BOS for a named template, where due


def _single_token(tokenizer: Any, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def _resolve(tokenizer: Any, name: str | None) -> _Resolved:
    """The named template if given, else the tokenizer's own, else a UserError saying what to pass."""
    if name:
        template = get_chat_template(name)
        marker = template.end_of_turn or tokenizer.eos_token
        if marker is None or not _single_token(tokenizer, marker):
            tokens = " ".join(f'"{token}"' for token in template.special_tokens or (marker,))
            message = f"'{name}' ends assistant turns with '{marker}', not a token of this tokenizer"
            raise UserError(f"{message}: add it with --special_tokens {tokens}", field="chat_template")
        plain = tokenizer("a", add_special_tokens=True)["input_ids"]
        adds_bos = tokenizer.bos_token_id is not None and plain[:1] == [tokenizer.bos_token_id]
        return _Resolved(template.jinja, tokenizer.bos_token if adds_bos and not template.writes_bos else "")
    if getattr(tokenizer, "chat_template", None):
        return _Resolved(tokenizer.get_chat_template(), "")
    known = ", ".join(sorted(CHAT_TEMPLATES))
    message = "chat records need a chat template and the tokenizer has none: pass --chat_template NAME"
    raise UserError(f"{message} (one of {known})", field="chat_template")


def _render(tokenizer: Any, resolved: _Resolved, messages: list[Message], generation_prompt: bool) -> str:
    if not messages and not generation_prompt:
        return ""
    from jinja2 import TemplateError

    try:
        if messages:
            text = tokenizer.apply_chat_template(
                messages, chat_template=resolved.source, tokenize=False, add_generation_prompt=generation_prompt
            )
        else:  # the header of an opening assistant turn; apply_chat_template refuses empty conversations
            from transformers.utils.chat_template_utils import render_jinja_template

            text = render_jinja_template(
                [[]], chat_template=resolved.source, add_generation_prompt=True, **tokenizer.special_tokens_map
            )[0][0]
    except (TemplateError, ValueError, TypeError) as error:
        raise UserError(f"the chat template cannot render this conversation: {error}", field="messages") from None
    return resolved.prefix + text


def _extension(shorter: str, longer: str) -> str:
    if not longer.startswith(shorter):
        message = "the chat template renders the start of a conversation differently from the whole"
        raise UserError(f"{message}, so turns cannot be located: pass --chat_template NAME", field="chat_template")
    return longer[len(shorter) :]


def _pieces(tokenizer: Any, resolved: _Resolved, messages: list[Message]) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, supervised) pieces (see the module docstring)."""
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for index, message in enumerate(messages):
        closed = _render(tokenizer, resolved, messages[: index + 1], False)
        if message["role"] == "assistant":
            opened = _render(tokenizer, resolved, messages[:index], True)
            turn = _extension(opened, closed)
            answer = turn.rstrip()
            pieces += [(_extension(rendered, opened), False), (answer, True), (turn[len(answer) :], False)]
        else:
            pieces.append((_extension(rendered, closed), False))
        rendered = closed
    return pieces


def _tokenize(tokenizer: Any, text: str, at_start: bool) -> list[int]:
    """Ids of one piece as inside the whole text: a piece that does not open it is tokenized after an anchor
    token whose id is dropped, as SentencePiece-style tokenizers prepend a word-start space to each call."""
    anchor = "" if at_start or tokenizer.eos_token is None else tokenizer.eos_token
    ids = list(tokenizer(anchor + text, add_special_tokens=False)["input_ids"])
    if anchor and ids[:1] == [tokenizer.eos_token_id]:
        return ids[1:]
    return ids if not anchor else list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode(tokenizer: Any, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int], int]:
    """(ids, labels, position of the last supervised piece), checked to decode to the rendered text."""
    ids: list[int] = []
    labels: list[int] = []
    last_answer = 0
    for text, supervised in pieces:
        last_answer = len(ids) if supervised else last_answer
        piece_ids = _tokenize(tokenizer, text, at_start=not ids) if text else []
        ids += piece_ids
        labels += piece_ids if supervised else [IGNORE_INDEX] * len(piece_ids)
    text = "".join(piece for piece, _ in pieces)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    # A lossy tokenizer (normalizer, unknown characters) cannot round-trip any text; only a difference from
    # tokenizing the whole text at once means the pieces were split wrongly.
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] if decoded != text else ids
    if decoded != tokenizer.decode(whole, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        raise UserError(f"chat pieces do not tokenize back to the conversation: {decoded!r} != {text!r}")
    return ids, labels, last_answer


def _exchanges(messages: list[Message]) -> tuple[list[Message], list[list[Message]]]:
    """Leading system messages, then exchanges: the turns up to an assistant reply, the reply(ies) included."""
    head_length = next((i for i, message in enumerate(messages) if message["role"] != "system"), len(messages))
    exchanges: list[list[Message]] = []
    for message in messages[head_length:]:
        if not exchanges or (message["role"] != "assistant" and exchanges[-1][-1]["role"] == "assistant"):
            exchanges.append([])
        exchanges[-1].append(message)
    return messages[:head_length], exchanges


def encode_chat(
    tokenizer: Any, messages: list[Message], *, max_length: int, chat_template: str | None = None
) -> EncodedSample:
    """Ids and labels of one conversation; turns after the last assistant reply teach nothing and are left out.

    Too long for ``max_length``: whole exchanges go, oldest first (leading system messages stay); if the last
    one alone is too long, its reply is cut at its end (the prompt too if needed, as for instructions).
    """
    resolved = _resolve(tokenizer, chat_template)
    last = max((i for i, message in enumerate(messages) if message["role"] == "assistant"), default=None)
    if last is None:
        raise UserError("no assistant message: nothing to learn", field="messages")
    head, exchanges = _exchanges(messages[: last + 1])

    def encode(dropped: int) -> tuple[list[int], list[int], int]:
        kept = head + [message for exchange in exchanges[dropped:] for message in exchange]
        return _encode(tokenizer, _pieces(tokenizer, resolved, kept))

    ids, labels, last_answer = encode(0)
    if len(ids) <= max_length:
        return EncodedSample(ids, labels, truncated=False)
    # Binary search for the fewest dropped exchanges that fit (or all but the last): more drops, fewer tokens.
    low, high = 0, len(exchanges) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if len(encode(middle)[0]) <= max_length else (middle + 1, high)
    ids, labels, last_answer = encode(low) if low else (ids, labels, last_answer)
    if len(ids) > max_length:
        prompt, response = fit_to_length(list(range(last_answer)), list(range(last_answer, len(ids))), max_length)
        ids, labels = [ids[j] for j in prompt + response], [labels[j] for j in prompt + response]
    return EncodedSample(ids, labels, truncated=True)


def render_chat_prompt(tokenizer: Any, messages: list[Message], chat_template: str | None = None) -> str:
    """The inference prompt: the conversation so far plus the assistant header, rendered as in training.

    Tokenize it with ``add_special_tokens=False`` (the rendering holds BOS where the model wants one) and stop
    generating at :func:`end_of_turn_token_ids`.
    """
    return _render(tokenizer, _resolve(tokenizer, chat_template), messages, True)


def end_of_turn_token_ids(tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """Tokens that end an assistant turn, for generation to stop at: EOS plus a named template's marker."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if chat_template:
        marker = get_chat_template(chat_template).end_of_turn
        if marker is not None and _single_token(tokenizer, marker):
            stops.append(tokenizer.convert_tokens_to_ids(marker))
    return stops


def chat_only(records: list[Any]) -> bool:
    """Every record is a conversation: the model learns the chat rendering only, so plain instructions are to be
    prompted as a user turn."""
    return bool(records) and all("messages" in record for record in records)
