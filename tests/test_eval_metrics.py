"""MLLMU-Bench scoring on known strings: letter extraction, cloze matching, ROUGE (stemmed) and sentence BLEU."""

import math

import pytest

from vkd_jax.benchmarks.mllmu import prompts
from vkd_jax.eval import metrics

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,official,lenient", [
    ("B", "B", "B"), (" b) Paris", "B", "B"), ("(C)", "", "C"), ("\n\nd.", "D", "D"), ("The answer is A", "", "T"),
    ("", "", ""), ("?!", "", ""), ("3", "", "3"), ("E", "", "E"), ("a", "A", "A")])
def test_classification_prediction_rules(text, official, lenient):
    """official (eval.py): the first character of the stripped reply, upper-cased, if it is one of A-D;
    lenient: the first alphanumeric character, upper-cased."""
    assert prompts.classification_prediction(text) == official
    assert prompts.classification_prediction(text, "lenient") == lenient


def test_classification_correct():
    assert prompts.classification_prediction(" a: kalo") == "A"
    assert prompts.classification_prediction("An apple") != "B"
    assert prompts.classification_prediction("") != "A"
    assert prompts.classification_prediction("(a)") != "A"
    assert prompts.classification_prediction("(a)", "lenient") == "A"


def test_cloze_substring_lower_cased():
    assert prompts.cloze_correct("The answer is KaloRen.", "kaloren")
    assert prompts.cloze_correct("kaloren", "KaloRen")
    assert not prompts.cloze_correct("kalo ren", "kaloren")
    assert not prompts.cloze_correct("", "x")


def test_rouge_known_values_with_stemming():
    # stemmed tokens: pred [the cat run home], ref [the cat are run home]
    r = metrics.rouge("the cat runs home", "The cats are running home")
    assert r["rouge1"] == pytest.approx(8 / 9)   # P 4/4, R 4/5
    assert r["rouge2"] == pytest.approx(4 / 7)   # bigrams P 2/3, R 2/4
    assert r["rougeL"] == pytest.approx(8 / 9)   # LCS 4
    assert metrics.rouge("same words here", "Same words, here!") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert metrics.rouge("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # ROUGE-L uses the longest common subsequence, not contiguous n-grams
    assert metrics.rouge("a x b y c", "a b c")["rougeL"] == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))


def test_sentence_bleu_known_values():
    assert metrics.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # clipped n-gram precisions 5/6, 3/5, 1/4, 0/3 -> method1 smoothing (0 + 0.1)/3; equal lengths: BP = 1
    ref = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)) / 4)
    assert metrics.sentence_bleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(ref)
    # a short hypothesis: brevity penalty and missing n-gram orders as NLTK handles them
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    assert metrics.sentence_bleu("the cat", "the cat sat on the mat") == pytest.approx(
        sentence_bleu([["the", "cat", "sat", "on", "the", "mat"]], ["the", "cat"],
                      smoothing_function=SmoothingFunction().method1))
    assert metrics.sentence_bleu("", "the cat") == 0.0
    assert metrics.sentence_bleu("the cat", "") == 0.0
    assert metrics.sentence_bleu("The Cat", "the cat") < 0.2  # case-sensitive whitespace tokens, as the benchmark
