"""The flags that say which data to train on and how it becomes token sequences."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Which data to train on and how to turn it into token sequences."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: Alpaca JSON/JSONL (instruction, input, output), Dolly JSONL "
            "(instruction, context, response), chat JSONL (messages) or CSV."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets.save_to_disk` directory, or a hub data set name where a hub is reachable."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "With --do_eval and no validation data: the percentage of the training data held out."},
    )
    max_seq_length: int = field(
        default=512,
        metadata={
            "help": "Longest token sequence; longer samples are truncated (and counted), packed blocks have this size."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training samples (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation samples."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenize the data (default: one)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenize again even if a cached result exists."})
    special_tokens: list[str] | None = field(
        default=None, metadata={"help": "Extra special tokens to add to the tokenizer (their embeddings are trained)."}
    )
    train_on_inputs: bool = field(
        default=False,
        metadata={"help": "Also train on the prompt tokens. Default: only the response (and its EOS) is in the loss."},
    )
    dataset_concatenation: bool = field(
        default=False,
        metadata={"help": "Pack several samples into each max_seq_length block; samples never attend to each other."},
    )
    prompt_template: str = field(
        default="alpaca",
        metadata={
            "help": "Prompt template for instruction records: alpaca, llama2, plain, or a .json/.yaml file with "
            "with_input ({instruction}, {input}) and without_input ({instruction}); saved with the run."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat records: a named chat template (chatml, qwen, llama3, mistral, zephyr, llama2_chat; see "
            "finetuning/data/chat_templates.py) instead of the tokenizer's own."
        },
    )


@dataclass
class Seq2SeqDataArguments(DataArguments):
    """Encoder-decoder models truncate the prompt (encoder) and the response (decoder) separately."""

    max_source_length: int = field(default=512, metadata={"help": "Longest encoder input (the prompt), in tokens."})
    max_target_length: int = field(default=256, metadata={"help": "Longest decoder target (the response), in tokens."})
