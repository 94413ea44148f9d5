"""CLEAR (and the embedded world that mirrors it):

- `reader`: the parquet download (therem/CLEAR) -> TFDS `clear_bench` (row validation);
- `generator`: the embedded CLEAR (faces, captions, text-only TOFU-style rows, real faces and real-world images);
- `prompts`: LLaVA's chat prompt around each question, the official caption questions, multiple choice, and a
  row's training examples;
- `protocol`: both readings (the follow-up work's name recognition and QA; the official six tasks with Truth Ratio,
  Forget Quality and Model Utility);
- `adapter`: the benchmark behind the pipeline's interface (`ClearBench`).
"""
