"""Chat records: exact assistant-only label masks, truncation by whole exchanges, template choice and errors,
and a chat fine-tuning run end to end."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REPO

from finetuning.data.chat import chat_only, encode_chat, end_of_turn_token_ids, render_chat_prompt
from finetuning.data.chat_templates import CHAT_TEMPLATES
from finetuning.data.encoding import encode_causal_record
from finetuning.data.samples import IGNORE_INDEX
from finetuning.data.templates import TEMPLATES, get_template
from finetuning.errors import UserError

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CHAT = [
    {"role": "user", "content": "How many legs does a spider have?"},
    {"role": "assistant", "content": "Eight."},
    {"role": "user", "content": "And an ant?"},
    {"role": "assistant", "content": "Six."},
]


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer):
    """The tiny tokenizer after ``--special_tokens`` with the ChatML and Llama 3 markers."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS + LLAMA3_TOKENS})
    return tokenizer


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def supervised_spans(tokenizer, sample) -> list[str]:
    """The decoded runs of consecutive supervised tokens (labels equal to the input ids there)."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (token, IGNORE_INDEX)
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return [tokenizer.decode(span) for span in spans]


def expected(tokenizer, parts: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels built from the literal text of each masked or supervised part."""
    input_ids, labels = [], []
    for text, supervised in parts:
        part = ids(tokenizer, text)
        input_ids += part
        labels += part if supervised else [IGNORE_INDEX] * len(part)
    return input_ids, labels


def test_chatml_with_system_prompt_supervises_exactly_the_assistant_turns_and_im_end(chat_tokenizer):
    sample = encode_chat(chat_tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="chatml")
    header = "<|im_start|>assistant\n"
    parts = [
        (
            f"<s><|im_start|>system\n{SYSTEM['content']}<|im_end|>\n<|im_start|>user\n{CHAT[0]['content']}<|im_end|>\n"
            f"{header}",
            False,
        ),
        ("Eight.<|im_end|>", True),
        (f"\n<|im_start|>user\nAnd an ant?<|im_end|>\n{header}", False),
        ("Six.<|im_end|>", True),
        ("\n", False),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)
    assert sample.input_ids[0] == chat_tokenizer.bos_token_id and not sample.truncated
    assert supervised_spans(chat_tokenizer, sample) == ["Eight.<|im_end|>", "Six.<|im_end|>"]
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [label for label in sample.labels if label != IGNORE_INDEX].count(im_end) == 2  # one token each


def test_zephyr_without_system_prompt_supervises_eos_as_the_end_of_turn(chat_tokenizer):
    sample = encode_chat(chat_tokenizer, CHAT, max_length=512, chat_template="zephyr")
    parts = [
        ("<s><|user|>\nHow many legs does a spider have?</s>\n<|assistant|>\n", False),
        ("Eight.</s>", True),
        ("\n<|user|>\nAnd an ant?</s>\n<|assistant|>\n", False),
        ("Six.</s>", True),
        ("\n", False),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)
    assert supervised_spans(chat_tokenizer, sample) == ["Eight.</s>", "Six.</s>"]


def test_llama2_chat_puts_the_system_prompt_in_the_first_inst_block(chat_tokenizer):
    sample = encode_chat(chat_tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="llama2_chat")
    assert chat_tokenizer.decode(sample.input_ids) == (
        f"<s>[INST] <<SYS>>\n{SYSTEM['content']}\n<</SYS>>\n\n{CHAT[0]['content']} [/INST] Eight. </s>"
        "<s>[INST] And an ant? [/INST] Six. </s>"
    )
    # the template writes the answer after " [/INST]" as " answer </s>": all of it is the model's to generate
    assert supervised_spans(chat_tokenizer, sample) == [" Eight. </s>", " Six. </s>"]


def test_llama3_supervises_each_answer_through_eot_id(chat_tokenizer):
    sample = encode_chat(chat_tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="llama3")
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    parts = [
        (
            f"<s><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM['content']}<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n{CHAT[0]['content']}<|eot_id|>{header}",
            False,
        ),
        ("Eight.<|eot_id|>", True),
        (f"<|start_header_id|>user<|end_header_id|>\n\nAnd an ant?<|eot_id|>{header}", False),
        ("Six.<|eot_id|>", True),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)
    assert end_of_turn_token_ids(chat_tokenizer, "llama3")[-1] == chat_tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_mistral_puts_the_system_prompt_in_the_first_inst_and_answers_end_with_eos(chat_tokenizer):
    sample = encode_chat(chat_tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="mistral")
    parts = [
        (f"<s>[INST] {SYSTEM['content']}\n\n{CHAT[0]['content']} [/INST]", False),
        ("Eight.</s>", True),
        ("[INST] And an ant? [/INST]", False),
        ("Six.</s>", True),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)


def test_qwen_adds_its_default_system_prompt_only_when_there_is_none(chat_tokenizer):
    header = "<|im_start|>assistant\n"
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    sample = encode_chat(chat_tokenizer, CHAT[:2], max_length=512, chat_template="qwen")
    parts = [
        (f"<s>{default}<|im_start|>user\n{CHAT[0]['content']}<|im_end|>\n{header}", False),
        ("Eight.<|im_end|>", True),
        ("\n", False),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)
    with_system = encode_chat(chat_tokenizer, [SYSTEM, *CHAT[:2]], max_length=512, chat_template="qwen")
    chatml = encode_chat(chat_tokenizer, [SYSTEM, *CHAT[:2]], max_length=512, chat_template="chatml")
    assert (with_system.input_ids, with_system.labels) == (chatml.input_ids, chatml.labels)


def test_inference_prompt_is_the_training_text_up_to_the_last_answer(chat_tokenizer):
    for name in CHAT_TEMPLATES:
        sample = encode_chat(chat_tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template=name)
        prompt_ids = ids(chat_tokenizer, render_chat_prompt(chat_tokenizer, [SYSTEM, *CHAT[:3]], name))
        assert sample.input_ids[: len(prompt_ids)] == prompt_ids, name
        assert sample.labels[len(prompt_ids) - 1] == IGNORE_INDEX and sample.labels[len(prompt_ids)] != IGNORE_INDEX
    stops = end_of_turn_token_ids(chat_tokenizer, "chatml")
    assert stops == [chat_tokenizer.eos_token_id, chat_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_long_conversation_loses_whole_oldest_exchanges_and_keeps_the_system_prompt(chat_tokenizer):
    third = [{"role": "user", "content": "And a bee?"}, {"role": "assistant", "content": "Six as well."}]
    messages = [SYSTEM, *CHAT, *third, {"role": "user", "content": "unanswered"}]

    def encoded(kept, max_length=512):
        return encode_chat(chat_tokenizer, kept, max_length=max_length, chat_template="chatml")

    full = encoded(messages)
    assert full.input_ids == encoded(messages[:-1]).input_ids  # a trailing unanswered turn teaches nothing
    without_first = encoded([SYSTEM, *CHAT[2:], *third])
    last_only = encoded([SYSTEM, *third])
    assert len(last_only.input_ids) < len(without_first.input_ids) < len(full.input_ids)

    sample = encoded(messages, max_length=len(without_first.input_ids))
    assert (sample.input_ids, sample.labels, sample.truncated) == (without_first.input_ids, without_first.labels, True)
    assert supervised_spans(chat_tokenizer, sample) == ["Six.<|im_end|>", "Six as well.<|im_end|>"]
    sample = encoded(messages, max_length=len(without_first.input_ids) - 1)
    assert (sample.input_ids, sample.labels, sample.truncated) == (last_only.input_ids, last_only.labels, True)
    assert chat_tokenizer.decode(sample.input_ids) == (
        f"<s><|im_start|>system\n{SYSTEM['content']}<|im_end|>\n<|im_start|>user\nAnd a bee?<|im_end|>\n"
        "<|im_start|>assistant\nSix as well.<|im_end|>\n"
    )


def test_last_exchange_too_long_cuts_the_answer_at_its_end(chat_tokenizer):
    answer = "Spiders have eight legs, insects have six, and that is how you tell them apart. " * 4
    messages = [*CHAT[:2], {"role": "user", "content": "Why?"}, {"role": "assistant", "content": answer}]
    alone = encode_chat(chat_tokenizer, messages[2:], max_length=512, chat_template="chatml")
    prompt_length = alone.labels.index(next(label for label in alone.labels if label != IGNORE_INDEX))
    max_length = 2 * prompt_length + 4  # the prompt fits in half the window, so only the answer is cut
    sample = encode_chat(chat_tokenizer, messages, max_length=max_length, chat_template="chatml")
    assert sample.truncated
    assert (sample.input_ids, sample.labels) == (alone.input_ids[:max_length], alone.labels[:max_length])
    (kept_answer,) = supervised_spans(chat_tokenizer, sample)
    assert answer.startswith(kept_answer)  # no end-of-turn token: the answer goes on past the window
    assert sum(label != IGNORE_INDEX for label in sample.labels) == max_length - prompt_length


def test_prompt_longer_than_the_window_still_leaves_supervised_tokens(chat_tokenizer):
    messages = [{"role": "user", "content": "tell me " * 200}, {"role": "assistant", "content": "No."}]
    sample = encode_chat(chat_tokenizer, messages, max_length=16, chat_template="chatml")
    assert len(sample.input_ids) == 16 and sample.truncated
    assert sample.input_ids[0] == chat_tokenizer.bos_token_id
    assert supervised_spans(chat_tokenizer, sample) == ["No.<|im_end|>"]


def test_tokenizer_own_chat_template_is_used_and_a_named_one_wins(chat_tokenizer):
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATES["chatml"].jinja
    own = encode_chat(tokenizer, CHAT, max_length=512)
    # the tokenizer's own template is taken as written: it adds no BOS, so none is prepended
    assert tokenizer.decode(own.input_ids).startswith("<|im_start|>user\n")
    assert supervised_spans(tokenizer, own) == ["Eight.<|im_end|>", "Six.<|im_end|>"]
    named = encode_chat(tokenizer, CHAT, max_length=512, chat_template="zephyr")
    assert supervised_spans(tokenizer, named) == ["Eight.</s>", "Six.</s>"]
    record = encode_causal_record(
        {"messages": CHAT},
        tokenizer=tokenizer,
        template=get_template("alpaca"),
        max_length=512,
        train_on_inputs=False,
        chat_template="zephyr",
    )
    assert record == named.as_dict()


def test_errors_name_the_flag_to_pass(tiny_tokenizer, chat_tokenizer):
    with pytest.raises(UserError, match="pass --chat_template NAME") as error:
        encode_chat(tiny_tokenizer, CHAT, max_length=512)
    known = ", ".join(sorted(CHAT_TEMPLATES))
    message = "chat records need a chat template and the tokenizer has none: pass --chat_template NAME"
    assert str(error.value) == f"field 'chat_template': {message} (one of {known})" and "chatml, " in known
    with pytest.raises(UserError, match='add it with --special_tokens "<\\|im_start\\|>" "<\\|im_end\\|>"'):
        encode_chat(tiny_tokenizer, CHAT, max_length=512, chat_template="chatml")
    with pytest.raises(UserError, match="'alpaca' is an instruction template"):
        encode_chat(chat_tokenizer, CHAT, max_length=512, chat_template="alpaca")
    assert not set(CHAT_TEMPLATES) & set(TEMPLATES)
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '[' + m['content'] + ']' if loop.last else m['content'] }}{% endfor %}"
    )
    with pytest.raises(UserError, match="cannot be located"):
        encode_chat(tokenizer, CHAT, max_length=512)


def test_errors_say_what_is_wrong_and_name_the_field(tiny_tokenizer, chat_tokenizer):
    """The one-line error names the flag or the record field (finetuning.errors); a bare ValueError would not."""
    with pytest.raises(UserError, match="'chatml' ends assistant turns with '<\\|im_end\\|>', not a token") as error:
        encode_chat(tiny_tokenizer, CHAT, max_length=512, chat_template="chatml")
    assert error.value.field == "chat_template"
    with pytest.raises(UserError) as error:
        encode_chat(chat_tokenizer, [SYSTEM, CHAT[0]], max_length=512, chat_template="chatml")
    assert str(error.value) == "field 'messages': no assistant message: nothing to learn"
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(UserError) as error:
        encode_chat(tokenizer, CHAT, max_length=512)
    assert (
        str(error.value) == "field 'messages': the chat template cannot render this conversation: roles must alternate"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '[' + m['content'] + ']' if loop.last else m['content'] }}{% endfor %}"
    )
    with pytest.raises(UserError) as error:
        encode_chat(tokenizer, CHAT, max_length=512)
    assert str(error.value).startswith("field 'chat_template': the chat template renders the start of a conversation")


def test_a_conversation_opened_by_the_assistant_supervises_its_first_answer_after_the_header(chat_tokenizer):
    """ShareGPT data may start with the model's greeting: the header before it comes from rendering no messages
    with a generation prompt."""
    greeting = {"role": "assistant", "content": "Hello."}
    sample = encode_chat(chat_tokenizer, [greeting, *CHAT[:2]], max_length=512, chat_template="chatml")
    header = "<|im_start|>assistant\n"
    parts = [
        (f"<s>{header}", False),
        ("Hello.<|im_end|>", True),
        (f"\n<|im_start|>user\n{CHAT[0]['content']}<|im_end|>\n{header}", False),
        ("Eight.<|im_end|>", True),
        ("\n", False),
    ]
    assert (sample.input_ids, sample.labels) == expected(chat_tokenizer, parts)
    # a template that writes BOS itself (as Gemma's does) renders the lone header with the tokenizer's tokens too
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATES["chatml"].jinja
    own = encode_chat(tokenizer, [greeting, *CHAT[:2]], max_length=512)
    assert (own.input_ids, own.labels) == (sample.input_ids, sample.labels)


@pytest.fixture(scope="module")
def word_start_tokenizer():
    """A SentencePiece-style tokenizer, as Llama 2's: spaces become a word-start mark and the first word of
    every call gets one, so a piece of the conversation tokenized on its own would start a word where the whole
    text does not. Trained on the conversation's words; BOS added like the tiny tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    model.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    texts = [message["content"] for message in [SYSTEM, *CHAT]] + ["system\nuser\nassistant\n"]
    specials = ["<s>", "</s>", "<unk>", "<pad>"]
    model.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    model.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    return tokenizer


def test_word_start_tokenizer_pieces_are_the_whole_texts_tokens(word_start_tokenizer, monkeypatch):
    """Each piece is tokenized after an anchor token that is then dropped, so it gets no word start of its own:
    the ids are exactly those of the whole rendered text. Tokenizing the pieces alone is caught by the check
    that they decode back to the conversation."""
    from finetuning.data import chat

    tokenizer = word_start_tokenizer
    sample = encode_chat(tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="chatml")
    text = render_chat_prompt(tokenizer, [SYSTEM, *CHAT[:3]], "chatml") + "Six.<|im_end|>\n"
    assert sample.input_ids == ids(tokenizer, text) and sample.input_ids[0] == tokenizer.bos_token_id
    assert supervised_spans(tokenizer, sample) == ["Eight.<|im_end|>", "Six.<|im_end|>"]
    alone = chat._tokenize(tokenizer, "Six.", at_start=True)
    assert tokenizer.convert_ids_to_tokens(alone)[0].startswith("\u2581")  # what the anchor is there to avoid
    # A template that opens with a plain word, on a tokenizer without BOS: the first piece keeps the word start
    # the whole text has (later pieces split words, "\nuser", so only the decoded text is the same there).
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['role'] + ' ' + m['content'] + '\\n' }}{% endfor %}"
    plain.bos_token = None
    sample = encode_chat(plain, CHAT, max_length=512)
    whole = ids(plain, "".join(f"{message['role']} {message['content']}\n" for message in CHAT))
    assert sample.input_ids[:3] == whole[:3] and plain.convert_ids_to_tokens(whole)[0][0] == "\u2581"
    assert plain.decode(sample.input_ids) == plain.decode(whole)
    # a character the tokenizer does not know becomes <unk>: the text cannot round-trip, and is not refused
    unknown = [CHAT[0], {"role": "assistant", "content": "Eight \u03a9."}]
    sample = encode_chat(tokenizer, unknown, max_length=512, chat_template="chatml")
    assert supervised_spans(tokenizer, sample) == ["Eight <unk>.<|im_end|>"]
    monkeypatch.setattr(chat, "_tokenize", lambda tokenizer, text, at_start: ids(tokenizer, text))
    with pytest.raises(UserError) as error:
        encode_chat(tokenizer, [SYSTEM, *CHAT], max_length=512, chat_template="chatml")
    assert str(error.value).startswith("chat pieces do not tokenize back to the conversation: '<s><|im_start|>")


def test_a_tokenizer_that_adds_no_bos_gets_none_before_a_named_template(chat_tokenizer):
    """Qwen's and GPT-2's tokenizers name a BOS token but never add it: nor does the rendering."""
    from tokenizers import processors

    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id
    sample = encode_chat(tokenizer, CHAT, max_length=512, chat_template="chatml")
    assert tokenizer.decode(sample.input_ids).startswith("<|im_start|>user\n")
    assert render_chat_prompt(tokenizer, CHAT[:1], "chatml").startswith("<|im_start|>user\n")


def test_end_of_turn_tokens_are_eos_and_a_marker_only_where_the_tokenizer_has_it(tiny_tokenizer, chat_tokenizer):
    eos = chat_tokenizer.eos_token_id
    assert end_of_turn_token_ids(chat_tokenizer, "zephyr") == [eos]  # turns end with EOS: no marker of its own
    assert end_of_turn_token_ids(tiny_tokenizer, "chatml") == [eos]  # <|im_end|> not added: not a stop token
    assert end_of_turn_token_ids(chat_tokenizer) == [eos]
    no_eos = copy.deepcopy(chat_tokenizer)
    no_eos.eos_token = None
    assert end_of_turn_token_ids(no_eos, "chatml") == [chat_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_chat_only_means_every_record_is_a_conversation():
    assert chat_only([{"messages": CHAT}, {"messages": CHAT[:2]}])
    assert not chat_only([{"messages": CHAT}, {"instruction": "a", "input": "", "output": "b"}])
    assert not chat_only([])


def test_truncation_keeps_exchanges_whole_with_consecutive_turns_and_drops_the_fewest(chat_tokenizer):
    """An exchange is every turn up to the assistant's reply(ies): two user turns in a row, or two replies,
    stay together when older exchanges go. For each window the fewest oldest exchanges are dropped."""

    def encoded(kept, max_length=512):
        return encode_chat(chat_tokenizer, kept, max_length=max_length, chat_template="chatml")

    def ask(number):
        return [{"role": "user", "content": f"Question {number}?"}, {"role": "assistant", "content": f"{number}."}]

    first = [{"role": "user", "content": "Hi."}, *ask(0), {"role": "assistant", "content": "Also."}]  # user, user,
    # assistant, assistant: one exchange
    exchanges = [first, *(ask(number) for number in range(1, 7))]
    messages = [SYSTEM, *(message for exchange in exchanges for message in exchange)]
    full = encoded(messages)
    assert full.truncated is False and encoded(messages, len(full.input_ids)).truncated is False  # exact fit
    kept = [encoded([SYSTEM, *(m for exchange in exchanges[dropped:] for m in exchange)]) for dropped in range(7)]
    for dropped in range(1, 7):
        for max_length in (len(kept[dropped].input_ids), len(kept[dropped - 1].input_ids) - 1):
            sample = encoded(messages, max_length)
            expected_sample = (kept[dropped].input_ids, kept[dropped].labels, True)
            assert (sample.input_ids, sample.labels, sample.truncated) == expected_sample, (dropped, max_length)


@pytest.mark.slow
def test_chat_data_fine_tunes_with_chatml_and_lora(warm_run, tiny_model, chat_tokenizer, tmp_path):
    """The documented workflow: convert ShareGPT to messages, then train with a named template and its tokens."""
    data = tmp_path / "chat.jsonl"
    converted = warm_run(
        "prepare_data/convert.py",
        "--input",
        REPO / "tests/fixtures/prepare_data/sharegpt.json",
        "--output",
        data,
        "--to",
        "messages",
    )
    assert converted.returncode == 0, converted.stderr
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    supervised = sum(
        sum(
            label != IGNORE_INDEX
            for label in encode_chat(chat_tokenizer, record["messages"], max_length=512, chat_template="chatml").labels[
                1:
            ]
        )
        for record in records
    )
    output = tmp_path / "out"
    result = warm_run(
        "finetune_clm.py",
        "--model_name_or_path",
        tiny_model("llama"),
        "--train_file",
        data,
        "--output_dir",
        output,
        "--do_train",
        "--chat_template",
        "chatml",
        "--special_tokens",
        *CHATML_TOKENS,
        "--peft",
        "lora",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--save_strategy",
        "no",
        "--overwrite_cache",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"train data: {len(records)} samples read, 0 empty skipped, 0 truncated" in result.stdout
    assert f"({supervised} in the loss)" in result.stdout
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {path.name for path in output.iterdir()}
    saved = json.loads((output / "prompt_template.json").read_text())
    assert (saved["chat_template"], saved["chat"]) == ("chatml", True)
    # inference prompts the chat-trained model as chat, from another directory
    answered = warm_run(
        "inference.py", "--peft_model_path", output, "--instructions", "Hi", "--max_new_tokens", "2", cwd=tmp_path
    )
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert "prompts: chat, chatml's template" in answered.stderr and "Instruction: Hi\nResponse:" in answered.stdout
