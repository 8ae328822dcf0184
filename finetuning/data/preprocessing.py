"""Turning validated records into the tokenized (and optionally packed) data sets the Trainer reads.

Tokenization is cached on disk under a key of everything that affects its result (records, tokenizer,
settings), so in a distributed run the main process tokenizes once and the other ranks load its result, and
a rerun of the same command skips the work. The data report tells the user what happened to their samples:
how many were read, truncated, packed, and how much of each batch is padding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuning.data.packing import pack_batch
from finetuning.data.records import LoadedData
from finetuning.data.samples import supervised_count
from finetuning.data.templates import get_template

logger = logging.getLogger(__name__)

PACKING_CHUNK = 2000  # samples packed together: large enough for tight bins, small enough for quick maps
CACHE_VERSION = "1"  # bump when encoding or packing changes what a cached file holds


@dataclass
class DataReport:
    split: str
    records: int
    empty_skipped: int
    truncated: int
    sequences: int
    packed_blocks: int | None
    tokens: int
    supervised_tokens: int
    padding_fraction: float

    def format(self) -> str:
        packing = f", packed into {self.packed_blocks} blocks" if self.packed_blocks is not None else ""
        return (
            f"{self.split} data: {self.records} samples read, {self.empty_skipped} empty skipped, "
            f"{self.truncated} truncated{packing}; {self.tokens} tokens ({self.supervised_tokens} in the loss), "
            f"padding {100 * self.padding_fraction:.1f}% of batch tokens"
        )

    def truncation_warning(self, limit: str) -> str | None:
        """One line when samples were cut to ``limit`` (the flag and its value), louder when all of them were."""
        if not self.truncated:
            return None
        if self.truncated == self.sequences:
            return (
                f"{self.split} data: ALL {self.truncated} samples were cut to {limit}: raise it, or see what is "
                "lost with prepare_data/inspect_data.py --tokenizer"
            )
        share = 100 * self.truncated / max(self.sequences, 1)
        return f"{self.split} data: {self.truncated} of {self.sequences} samples ({share:.1f}%) were cut to {limit}"


def cache_key(records: list[dict[str, Any]], tokenizer: Any, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, settings], sort_keys=True, default=str).encode())
    digest.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}".encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())  # chat records render through it
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:24]


def default_cache_dir(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir) / "tokenized"
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "finetuning-tokenized"


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when batches of ``batch_size`` consecutive samples are padded to their longest."""
    padded = sum(
        max(chunk) * len(chunk) for chunk in (lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size))
    )
    return 1 - sum(lengths) / padded if padded else 0.0


def _with_statistics(row: dict[str, str], encode: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    sample = encode(json.loads(row["record"]))
    sample["length"] = len(sample["input_ids"])
    if "supervised" not in sample:  # encoders whose labels are not shifted (seq2seq) count their own
        sample["supervised"] = supervised_count(sample["labels"])
    return sample


def build_dataset(
    loaded: LoadedData,
    encode: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    split: str,
    settings: dict[str, Any],
    tokenizer: Any,
    pack_block_size: int | None,
    batch_size: int,
    num_proc: int | None,
    cache_dir: str | None,
    overwrite_cache: bool,
) -> tuple[Any, DataReport]:
    """Encode (and pack) ``loaded`` into a ``datasets.Dataset``; returns it with its report.

    ``encode`` maps one normalized record to ``{"input_ids", "labels", "truncated"}`` (plus any extra model
    inputs, and optionally ``supervised``, its count of label tokens in the loss); it must be picklable when
    ``num_proc`` > 1.
    """
    import datasets

    key = cache_key(loaded.records, tokenizer, {**settings, "pack": pack_block_size, "split": split})
    directory = default_cache_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    raw = datasets.Dataset.from_dict({"record": [json.dumps(record) for record in loaded.records]})
    encoded = raw.map(
        _with_statistics,
        fn_kwargs={"encode": encode},
        remove_columns=["record"],
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        cache_file_name=str(directory / f"{key}-encoded.arrow"),
        load_from_cache_file=not overwrite_cache,
        desc=f"tokenizing {split} data",
    )
    truncated = sum(encoded["truncated"])
    supervised = sum(encoded["supervised"])
    lengths = encoded["length"]
    encoded = encoded.remove_columns(["truncated", "supervised", "length"])
    blocks = None
    result = encoded
    if pack_block_size is not None:
        result = encoded.map(
            pack_batch,
            batched=True,
            batch_size=PACKING_CHUNK,
            remove_columns=encoded.column_names,
            fn_kwargs={"block_size": pack_block_size},
            cache_file_name=str(directory / f"{key}-packed.arrow"),
            load_from_cache_file=not overwrite_cache,
            desc=f"packing {split} data",
        )
        blocks = len(result)
        lengths = result["length"]
        result = result.remove_columns(["length"])
    report = DataReport(
        split=split,
        records=len(loaded.records),
        empty_skipped=loaded.empty_skipped,
        truncated=truncated,
        sequences=len(encoded),
        packed_blocks=blocks,
        tokens=sum(lengths),
        supervised_tokens=supervised,
        padding_fraction=padding_fraction(lengths, batch_size),
    )
    return result, report


def _length_limit(data_args: Any) -> str:
    if hasattr(data_args, "max_source_length"):
        return f"--max_source_length {data_args.max_source_length} / --max_target_length {data_args.max_target_length}"
    return f"--max_seq_length {data_args.max_seq_length}"


def build_split_datasets(
    splits: Any,
    encode: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    tokenizer: Any,
    data_args: Any,
    training_args: Any,
    pack_block_size: int | None,
    settings: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Tokenize the train and evaluation splits (main process first; other ranks read its cache)."""
    settings = {key: value for key, value in vars(data_args).items()} | (settings or {})
    # a template file may change under the same name: its text is what the tokens depend on
    settings["prompt_template"] = dataclasses.asdict(get_template(data_args.prompt_template))
    built = {}
    with training_args.main_process_first(desc="tokenizing"):
        for name, loaded, batch_size in (
            ("train", splits.train, training_args.per_device_train_batch_size),
            ("validation", splits.validation, training_args.per_device_eval_batch_size),
        ):
            if loaded is None:
                built[name] = None
                continue
            built[name], report = build_dataset(
                loaded,
                encode,
                split=name,
                settings=settings,
                tokenizer=tokenizer,
                pack_block_size=pack_block_size,
                batch_size=batch_size,
                num_proc=data_args.preprocessing_num_workers,
                cache_dir=None,
                overwrite_cache=data_args.overwrite_cache,
            )
            if training_args.process_index == 0:
                logger.info(report.format())
                warning = report.truncation_warning(_length_limit(data_args))
                if warning:
                    logger.warning(warning)
    for note in splits.notes:
        logger.info(note)
    return built["train"], built["validation"]
