"""Unit tests of answering a prompt file (finetuning/inference/modes.py) and of scoring answers
(finetuning/data/scoring.py), with a stand-in generator."""

from __future__ import annotations

import json
import sys

import pytest

from finetuning.data.scoring import score_answers
from finetuning.inference.modes import predict_file, reference_answer


class FakeGenerator:
    """Answers each record with the text it is given in ANSWERS, 2 tokens per answer."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.generated_tokens = 0
        self.batches: list[int] = []

    def generate(self, records, batch_size=8, on_batch=None):
        answers = []
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            answers += [self.answers[record.get("instruction", "chat")] for record in chunk]
            self.generated_tokens += 2 * len(chunk)
            self.batches.append(len(chunk))
            on_batch(len(chunk))
        return answers


def test_scores_ignore_case_and_spacing_only():
    scores = score_answers(["The  cat sat", "a dog", ""], ["the cat sat", "the red fox", "x"])
    assert scores["exact_match"] == pytest.approx(100 / 3, abs=1e-4)
    assert scores["rouge1"] == pytest.approx(100 / 3, abs=1e-4) and set(scores) == {
        "exact_match",
        "rouge1",
        "rouge2",
        "rougeL",
    }
    assert score_answers([], []) == {}


def test_a_file_of_prompts_alone_needs_no_rouge_score(monkeypatch):
    """The lent GPU image has no rouge-score: inference.py on prompts without answers must still answer them."""
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # import rouge_score now raises ImportError
    assert score_answers([], []) == {}


def test_references_are_the_output_or_the_final_assistant_turn():
    assert reference_answer({"instruction": "a", "input": "", "output": "b"}) == "b"
    assert reference_answer({"instruction": "a", "input": "", "output": ""}) is None
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert reference_answer({"messages": chat}) == "Hello" and reference_answer({"messages": chat[:1]}) is None


def test_a_file_is_answered_with_progress_and_scored_against_the_answers_it_holds(tmp_path):
    records = [
        {"instruction": "Name a color.", "input": "", "output": "Green"},
        {"instruction": "Add.", "input": "1 + 2", "output": "3"},
        {"instruction": "No answer here.", "input": "", "output": ""},
    ]
    generator = FakeGenerator({"Name a color.": "green", "Add.": "4", "No answer here.": ""})
    output = tmp_path / "out.jsonl"
    result = predict_file(generator, [(dict(r), r) for r in records], str(output), batch_size=2)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["prediction"] for row in rows] == ["green", "4", ""] and rows[1]["input"] == "1 + 2"
    assert generator.batches == [2, 1]
    assert (result.records, result.new_tokens, result.empty, result.scored) == (3, 6, 1, 2)
    assert result.scores["exact_match"] == 50.0
    summary = result.format(str(output)).splitlines()
    assert (
        summary[0].startswith(f"wrote 3 predictions to {output} (")
        and "2.0 new tokens per answer, 1 empty" in summary[0]
    )
    assert summary[1].startswith("against the 2 answers in the file: exact_match 50.00, rouge1 50.00")
