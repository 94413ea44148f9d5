"""Data: MLLMU-Bench TFDS builder, the embedded benchmark, tokenizers, prompts, input pipeline."""
