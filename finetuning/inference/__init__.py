"""Inference: loading a finished run, generating with the prompt template it was trained with, and the modes
of ``inference.py``. Never imports training."""
