"""Choosing the train and evaluation records of a run: files, a saved data set, or a held-out share.

Reading and validating a single file is :mod:`finetuning.data.records`' job; this module decides which
records each split gets and refuses a run that would train on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetuning.data.records import LoadedData, is_empty, load_data_file, normalize_record
from finetuning.errors import UserError


@dataclass
class DataSplits:
    train: LoadedData | None = None
    validation: LoadedData | None = None
    notes: list[str] = field(default_factory=list)


def _load_dataset_dir(name: str, config_name: str | None) -> dict[str, LoadedData]:
    import datasets

    try:
        is_saved_dir = Path(name).is_dir()
        loaded = datasets.load_from_disk(name) if is_saved_dir else datasets.load_dataset(name, config_name)
    except Exception as error:  # datasets raises many types; the user needs the message, not the class
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot load data set: {message}", path=name, field="dataset_name") from None
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    result = {}
    for split_name, split in splits.items():
        records, empty = [], 0
        for index, raw in enumerate(split, start=1):
            record = normalize_record(raw, {"path": f"{name}[{split_name}]", "record": index})
            if is_empty(record):
                empty += 1
            else:
                records.append(record)
        result[split_name] = LoadedData(records=records, source=f"{name}[{split_name}]", empty_skipped=empty)
    return result


def _head(data: LoadedData | None, limit: int | None) -> LoadedData | None:
    if data is None or limit is None:
        return data
    return LoadedData(records=data.records[:limit], source=data.source, empty_skipped=data.empty_skipped)


def load_splits(data_args: Any, *, want_train: bool, want_eval: bool, seed: int) -> DataSplits:
    """Load the training and evaluation records the run asks for, holding out a split if it must."""
    splits = DataSplits()
    if data_args.dataset_name:
        from_dir = _load_dataset_dir(data_args.dataset_name, data_args.dataset_config_name)
        splits.train = from_dir.get("train")
        splits.validation = from_dir.get("validation") or from_dir.get("test")
    if data_args.train_file:
        splits.train = load_data_file(data_args.train_file)
    if data_args.validation_file:
        splits.validation = load_data_file(data_args.validation_file)
    if want_train and splits.train is None:
        raise UserError("no training data: pass --train_file or --dataset_name", field="train_file")
    if want_eval and splits.validation is None:
        source = splits.train
        if source is None:
            raise UserError("no evaluation data: pass --validation_file", field="validation_file")
        splits.train, splits.validation = _hold_out(source, data_args.validation_split_percentage, seed)
        splits.notes.append(f"held out {len(splits.validation.records)} records of {source.source} for evaluation")
    splits.train = _head(splits.train, data_args.max_train_samples)
    splits.validation = _head(splits.validation, data_args.max_eval_samples)
    if want_train and not splits.train.records:
        raise UserError("no usable training records", path=splits.train.source)
    return splits


def _hold_out(source: LoadedData, percentage: int, seed: int) -> tuple[LoadedData, LoadedData]:
    import random

    if not 0 < percentage < 100:
        raise UserError("must be between 1 and 99 to hold out evaluation data", field="validation_split_percentage")
    order = list(range(len(source.records)))
    random.Random(seed).shuffle(order)
    count = max(1, len(order) * percentage // 100)
    if count >= len(order):
        raise UserError("too few records to hold out an evaluation split; pass --validation_file", path=source.source)
    held = set(order[:count])
    train = [record for index, record in enumerate(source.records) if index not in held]
    validation = [source.records[index] for index in sorted(held)]
    return (
        LoadedData(train, source.source, source.empty_skipped),
        LoadedData(validation, f"{source.source} (held out)"),
    )
