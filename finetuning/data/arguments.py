"""The flags that say which data to train on and how it becomes token sequences."""

from __future__ import annotations

from dataclasses import dataclass

from finetuning.cli import flag


@dataclass
class DataArguments:
    """Which data to train on and how to turn it into token sequences."""

    train_file: str | None = flag(
        None,
        "Training data: Alpaca JSON/JSONL (instruction, input, output), Dolly JSONL "
        "(instruction, context, response), chat JSONL (messages) or CSV.",
    )
    validation_file: str | None = flag(None, "Evaluation data, same formats.")
    dataset_name: str | None = flag(
        None, "A `datasets.save_to_disk` directory, or a hub data set name where a hub is reachable."
    )
    dataset_config_name: str | None = flag(None, "Configuration of --dataset_name.")
    validation_split_percentage: int = flag(
        5, "With --do_eval and no validation data: the percentage of the training data held out."
    )
    max_seq_length: int = flag(
        512, "Longest token sequence; longer samples are truncated (and counted), packed blocks have this size."
    )
    max_train_samples: int | None = flag(None, "Use only the first N training samples (quick runs, debugging).")
    max_eval_samples: int | None = flag(None, "Use only the first N evaluation samples.")
    preprocessing_num_workers: int | None = flag(None, "Processes used to tokenize the data (default: one).")
    overwrite_cache: bool = flag(False, "Tokenize again even if a cached result exists.")
    special_tokens: list[str] | None = flag(
        None, "Extra special tokens to add to the tokenizer (their embeddings are trained)."
    )
    train_on_inputs: bool = flag(
        False, "Also train on the prompt tokens. Default: only the response (and its EOS) is in the loss."
    )
    dataset_concatenation: bool = flag(
        False, "Pack several samples into each max_seq_length block; samples never attend to each other."
    )
    prompt_template: str = flag(
        "alpaca",
        "Prompt template for instruction records: alpaca, llama2, plain, or a .json/.yaml file with "
        "with_input ({instruction}, {input}) and without_input ({instruction}); saved with the run.",
    )
    chat_template: str | None = flag(
        None,
        "Chat records: a named chat template (chatml, qwen, llama3, mistral, zephyr, llama2_chat; see "
        "finetuning/data/chat_templates.py) instead of the tokenizer's own.",
    )


@dataclass
class Seq2SeqDataArguments(DataArguments):
    """Encoder-decoder models truncate the prompt (encoder) and the response (decoder) separately."""

    max_source_length: int = flag(512, "Longest encoder input (the prompt), in tokens.")
    max_target_length: int = flag(256, "Longest decoder target (the response), in tokens.")
