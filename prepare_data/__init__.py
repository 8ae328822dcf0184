"""Turn raw data of many shapes into the files the training scripts read, and show what is in them.

``convert.py`` rewrites a file (seed tasks, Alpaca JSON/JSONL, Dolly-style JSONL, CSV, dialogue transcripts,
chat ``messages`` or ShareGPT) as Alpaca JSONL/JSON or chat ``messages`` JSONL; ``inspect_data.py`` reports
counts, empty and duplicate records and lengths, and can dedupe and split. The modules beside them are pure
functions so that each conversion is unit-testable without touching the command line.
"""
