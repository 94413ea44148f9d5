"""MLLMU-Bench (and the embedded world that mirrors it):

- `reader`: the parquet download -> TFDS `mllmu_bench` (row validation); `prepare` its CLI;
- `generator`: the embedded world (people, celebrities, poses, facts) written in the benchmark's exact schema;
  `python -m vkd_jax.benchmarks.mllmu.generator --out M --seed 0`;
- `prompts`: the official templates, answer extraction, and a profile's examples for training and evaluation;
- `protocol`: the official evaluation (classification, cloze, generation on forget / test / retain / celebrity);
- `adapter`: the benchmark behind the pipeline's interface (`MLLMUBench`: streams per stage, evaluation, the
  relearning attack's questions, the identity-free floor).
"""
