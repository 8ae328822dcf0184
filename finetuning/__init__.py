"""Shared building blocks of the fine-tuning scripts.

The entry scripts (``finetune_clm.py``, ``finetune_seq2seq.py``, ``inference.py``) are leaves: they parse
arguments and call into this package. Modules here import nothing heavy at import time, so ``--help`` is
instant and unit tests stay fast.
"""
