"""Scores of generated answers against reference answers: exact match and ROUGE-1/2/L F1, both x100.

One definition for every place that scores text: seq2seq evaluation with ``--predict_with_generate``,
``finetune_clm.py --do_predict`` and ``inference.py --input_file`` on a file that holds answers. ROUGE is
``rouge-score``'s, which runs offline (``evaluate``'s would fetch its script from the hub).
"""

from __future__ import annotations

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def normalize_answer(text: str) -> str:
    """Exact match ignores case and runs of whitespace, nothing else."""
    return " ".join(text.lower().split())


def score_answers(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match and ROUGE F1 (x100, 4 decimals) of ``predictions`` against ``references``. Nothing to
    score needs no ``rouge-score``: a file of prompts alone is answered where it is not installed."""
    if not references:
        return {}
    from rouge_score import rouge_scorer

    pairs = list(zip(predictions, references, strict=True))
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in pairs]
    matches = sum(normalize_answer(prediction) == normalize_answer(reference) for prediction, reference in pairs)
    metrics = {"exact_match": round(100 * matches / len(references), 4)}
    for name in ROUGE_TYPES:
        metrics[name] = round(100 * sum(score[name].fmeasure for score in scores) / len(scores), 4)
    return metrics
