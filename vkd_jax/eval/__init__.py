"""Evaluation machinery every benchmark shares: the query runner (`runner`: static-shape batches, greedy decoding
or continuation scores), batched greedy decoding with the KV cache (`decode`), generation scores (`metrics`:
ROUGE, BLEU), bootstrap intervals (`intervals`), the representation probe (`probe`). What a benchmark asks and
how it scores the answers is its own protocol (vkd_jax.benchmarks.<name>.protocol).

    from vkd_jax.eval.runner import EvalConfig, Runner
"""
