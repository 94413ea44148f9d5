"""Evaluation: MLLMU-Bench protocol (`evaluator`), batched greedy decoding with the KV cache (`decode`), scoring
(`metrics`).

    from vkd_jax.eval import EvalConfig, benchmark_sets, evaluate, forget_vqa_accuracy, question_keys
"""

from vkd_jax.eval.decode import greedy_decode, strip_after_eos
from vkd_jax.eval.evaluator import (
                                   EXTRA_METRICS,
                                   METRICS,
                                   SETS,
                                   EvalConfig,
                                   EvalSet,
                                   benchmark_sets,
                                   evaluate,
                                   evaluate_questions,
                                   forget_vqa_accuracy,
                                   question_keys,
)

__all__ = ("EXTRA_METRICS", "METRICS", "SETS", "EvalConfig", "EvalSet", "benchmark_sets", "evaluate",
           "evaluate_questions", "forget_vqa_accuracy", "question_keys", "greedy_decode", "strip_after_eos")
