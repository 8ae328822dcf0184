"""Data: instruction and chat records read and validated, rendered by prompt templates, tokenized with exact
prompt masks, packed and batched. Imports nothing above it (model, launch, training, inference)."""
