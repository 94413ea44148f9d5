"""Generation scores: ROUGE-1/2/L F-measure with Porter stemming (the `rouge-score` package, target = ground
truth) and sentence BLEU.

BLEU follows the benchmark's public evaluation code: NLTK `sentence_bleu` with the ground truth as the single
reference, whitespace tokenisation (`str.split()`, case kept), uniform 4-gram weights and `SmoothingFunction().method1`
(epsilon 0.1 added to zero n-gram counts); an empty hypothesis or reference scores 0.
"""

from __future__ import annotations

import functools
import warnings


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """{'rouge1', 'rouge2', 'rougeL'} F-measures in [0, 1] (rouge-score's tokenizer lower-cases and drops
    non-alphanumerics)."""
    s = _scorer().score(reference, prediction)
    return {k: float(v.fmeasure) for k, v in s.items()}


def rouge_recall(prediction: str, reference: str, kind: str = "rougeL") -> float:
    """ROUGE recall (stemmed), CLEAR's own reading."""
    return float(_scorer().score(reference, prediction)[kind].recall)


def sentence_bleu(prediction: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu
    hyp, ref = prediction.split(), reference.split()
    if not hyp or not ref:
        return 0.0
    with warnings.catch_warnings():  # NLTK warns about missing higher-order n-grams of short sentences
        warnings.simplefilter("ignore")
        return float(nltk_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
