"""Model: loading configs, tokenizers and weights, the PEFT set-up, kernel speed-ups and tiny offline models.
May import :mod:`finetuning.data`, never launch, training or inference."""
