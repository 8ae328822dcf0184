"""Save a random-weight Llama-shaped model of a bench preset, with a tokenizer, for runs of the real scripts.

finetune_clm.py loads models with ``from_pretrained`` like any user's; this gives it a full-size one without a
hub (speed does not depend on the weights' values). Weights are drawn on the GPU when there is one (drawing
7B numbers on one CPU thread takes minutes) and saved as bf16 safetensors.

    python bench/save_random_model.py --preset llama7b --tokenizer .bench/tokenizer-32000 --out .bench/models/llama7b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import PRESETS, build_model


def main(argv: list[str] | None = None) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a saved tokenizer of the preset's vocab")
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args(argv)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(options.tokenizer)
    if len(tokenizer) > PRESETS[options.preset][-1]:
        parser.error(f"{options.tokenizer}: {len(tokenizer)} tokens, more than the preset's vocabulary")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(options.preset, device, torch.bfloat16, None)
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if special != (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id):
        # the zero embedding row must be the pad token's (see build_model), or training gets NaN gradients
        parser.error(f"{options.tokenizer}: bos/eos/pad ids {special}; the presets use those of build_tokenizer")
    model.save_pretrained(options.out)
    tokenizer.save_pretrained(options.out)
    print(
        f"saved {options.preset} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters) to {options.out}"
    )
    return options.out


if __name__ == "__main__":
    main()
