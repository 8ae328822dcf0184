"""scripts/make_tiny_model.py: a tiny model of any supported architecture, built offline, loads as a real one."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

from finetuning.errors import UserError

sys.path.insert(0, str(REPO / "scripts"))


def test_builds_a_loadable_t5_with_its_tokenizer_and_refuses_to_overwrite_it(tmp_path, capsys):
    from make_tiny_model import main
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    output = tmp_path / "tiny-t5"
    main(["--architecture", "t5", "--output_dir", str(output), "--hidden", "16", "--vocab_size", "300"])
    model = AutoModelForSeq2SeqLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.model_type == "t5" and model.config.d_model == 16
    assert len(tokenizer) == model.config.vocab_size and tokenizer.eos_token == "</s>"
    assert "python finetune_seq2seq.py --model_name_or_path" in capsys.readouterr().out
    with pytest.raises(UserError, match="already holds a model"):
        main(["--architecture", "t5", "--output_dir", str(output)])


def test_bad_sizes_are_one_line_errors(tmp_path):
    from make_tiny_model import main

    with pytest.raises(UserError, match="--heads must be even and divide --hidden"):
        main(["--output_dir", str(tmp_path / "m"), "--heads", "3"])
