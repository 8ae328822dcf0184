"""Tiny models and tokenizers built offline, for the demo and the tests.

There is no model hub here (nor, for many users, a download budget for a 7B model to try things out). A
byte-level BPE tokenizer trained on a few KB of the user's own text plus a 2-layer config of the real
architecture exercise exactly the loading, training and saving code that a full-size model goes through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
ARCHITECTURES = ("llama", "mistral", "gpt_neox", "gptj", "bloom", "opt", "mpt", "gpt2", "t5")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, pad_token: bool = True) -> Any:
    """A byte-level BPE tokenizer (so no text is ever out of vocabulary) with BOS/EOS/UNK/PAD tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = dict(SPECIAL_TOKENS)
    if not pad_token:
        specials.pop("pad_token")
    tokenizer = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id(specials["bos_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{specials['bos_token']} $A",
        pair=f"{specials['bos_token']} $A $B",
        special_tokens=[(specials["bos_token"], bos)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)


def build_config(
    architecture: str, tokenizer: Any, *, hidden: int = 32, layers: int = 2, heads: int = 4, max_positions: int = 1024
) -> Any:
    """A config of the named architecture, tiny but with every structural feature of the full-size one."""
    import transformers as tf

    vocab = len(tokenizer)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # Llama, Mistral and GPT-NeoX spell their sizes alike; Llama and Mistral also share grouped-query attention.
    decoder = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_positions,
        **ids,
    }
    grouped = {**decoder, "num_key_value_heads": heads // 2}
    builders = {
        "llama": lambda: tf.LlamaConfig(**grouped),
        "mistral": lambda: tf.MistralConfig(**grouped, sliding_window=None),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**decoder),
        "gptj": lambda: tf.GPTJConfig(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            rotary_dim=hidden // heads,
            n_positions=max_positions,
            **ids,
        ),
        "bloom": lambda: tf.BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads, **ids),
        "opt": lambda: tf.OPTConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            word_embed_proj_dim=hidden,
            max_position_embeddings=max_positions,
            **ids,
        ),
        "mpt": lambda: tf.MptConfig(
            vocab_size=vocab, d_model=hidden, n_heads=heads, n_layers=layers, max_seq_len=max_positions, **ids
        ),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, **ids
        ),
        "t5": lambda: tf.T5Config(
            vocab_size=vocab,
            d_model=hidden,
            d_ff=2 * hidden,
            d_kv=hidden // heads,
            num_layers=layers,
            num_heads=heads,
            decoder_start_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
    }
    if architecture not in builders:
        raise ValueError(f"unknown architecture '{architecture}' (known: {', '.join(ARCHITECTURES)})")
    return builders[architecture]()


def build_tiny_model(architecture: str, tokenizer: Any, output_dir: str | Path, *, seed: int = 0, **sizes: Any) -> Path:
    """Save a randomly initialised tiny model and its tokenizer to ``output_dir`` (safetensors)."""
    import torch
    import transformers as tf

    config = build_config(architecture, tokenizer, **sizes)
    torch.manual_seed(seed)
    model_class = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    model = model_class.from_config(config)
    output = Path(output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a record (chat records nest theirs in lists of messages)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def build_tiny_model_from_data(
    architecture: str, data_file: str | Path, output_dir: str | Path, *, vocab_size: int = 512, **sizes: Any
) -> Path:
    """A tokenizer trained on the text of a data file (any training format) and a tiny model built on it."""
    from finetuning.data.records import iter_raw_records

    texts = [" ".join(_strings(raw)) for _, raw in iter_raw_records(Path(data_file))]
    return build_tiny_model(architecture, build_tokenizer(texts, vocab_size=vocab_size), output_dir, **sizes)
