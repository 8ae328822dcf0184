"""The data report's truncation warning: silent when nothing is cut, a count when some are, loud when all are."""

from __future__ import annotations

from finetuning.data.preprocessing import DataReport


def report(truncated: int, sequences: int = 200) -> DataReport:
    return DataReport("train", sequences, 0, truncated, sequences, None, 1000, 500, 0.0)


def test_truncation_warning_counts_the_cut_samples_and_shouts_when_all_are():
    assert report(0).truncation_warning("--max_seq_length 256") is None
    assert report(37).truncation_warning("--max_seq_length 256") == (
        "train data: 37 of 200 samples (18.5%) were cut to --max_seq_length 256"
    )
    everything = report(200).truncation_warning("--max_seq_length 256")
    assert everything is not None and everything.startswith("train data: ALL 200 samples were cut to")
    assert "\n" not in everything
