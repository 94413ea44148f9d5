"""Our evaluator against MLLMU-Bench's own evaluation script, on the same HF model folder, answer by answer.

    python bench/official_eval_parity.py --official_eval /path/to/MLLMU-Bench/eval.py --hf_dir W/hf_export \
        --manual_dir W/benchmark/raw --forget_ratio 10 --python /path/to/venv/bin/python \
        --out bench/official_parity.json

The official script (not part of this repository: point --official_eval at a checkout of the benchmark's
repository) runs unmodified in a second Python (`--python`: one with torch, transformers, pandas, scikit-learn,
accelerate, nltk, rouge-score) through a small shim that changes only what is not protocol:
- its hard-coded `.to("cuda")` is a no-op (CPU), and the model loads in `--official_dtype` (default float32, the
  dtype we evaluate in here; the script hard-codes float16, a GPU choice);
- `random.sample` returns no demo profiles, so its few-shot prompts are empty: zero-shot, the follow-up works'
  setting and our default (`eval.few_shot=False`);
- `random.choice` takes a profile's first Test_Set pose; ours scores every pose (`test_pose="mean"`) and the
  comparison uses our pose-0 records.
It prints every classification and cloze answer and writes every generation; we read those, evaluate the same
folder with `vkd_jax.eval` (the generated letter, official parsing), and count, per set and kind, the questions
whose answers agree exactly, beside both sides' metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SHIM = r'''
import os, random, runpy, sys
import torch, transformers
from transformers import feature_extraction_utils, tokenization_utils_base
def _stay(self, *a, **k):
    return self
tokenization_utils_base.BatchEncoding.to = _stay
feature_extraction_utils.BatchFeature.to = _stay
_dtype = getattr(torch, os.environ["PARITY_DTYPE"])
_orig = transformers.LlavaForConditionalGeneration.from_pretrained.__func__
def _load(cls, *a, **k):
    k.pop("torch_dtype", None); k.pop("device_map", None)
    return _orig(cls, *a, dtype=_dtype, **k)
transformers.LlavaForConditionalGeneration.from_pretrained = classmethod(_load)
random.sample = lambda population, k: []
random.choice = lambda seq: seq[0]
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
'''

SET_MARKERS = (("forget", "### Evaluating Forget Set ###"), ("test", "### Evaluating Test Set ###"),
               ("retain", "### Evaluating Retain Shared Set ###"),
               ("celebrity", "### Evaluating Real Celebrity Set ###"))
GEN_MODES = {"forget": "forget", "test": "test", "retain": "retain_shared", "celebrity": "retain_celebrity"}
BLOCK = re.compile(r"Prompt:  (.*?)\nModel Answer:  (.*?)\nCorrect Answer:  (.*?)\nThe model answer is:  (True|False)",
                   re.S)


def run_official(args, work: str) -> tuple[str, dict]:
    m = args.manual_dir
    link = os.path.join(work, "llava_export")  # the script picks its code path by model_id.startswith("llava")
    os.symlink(os.path.abspath(args.hf_dir), link)
    shim = os.path.join(work, "shim.py")
    with open(shim, "w") as f:
        f.write(SHIM)
    cmd = [args.python, shim, os.path.abspath(args.official_eval), "--model_id", "llava_export", "--cache_path",
           "llava_export", "--data_split_folder", os.path.abspath(m),
           "--few_shot_data", os.path.abspath(os.path.join(m, "Full_Set", "train-00000-of-00001.parquet")),
           "--test_data", os.path.abspath(os.path.join(m, "Test_Set")),
           "--celebrity_data", os.path.abspath(os.path.join(m, "Retain_Set", "train-00000-of-00001.parquet")),
           "--output_folder", "out", "--output_file", "parity", "--forget_ratio", str(args.forget_ratio)]
    env = {**os.environ, "PARITY_DTYPE": args.official_dtype, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"the official script failed:\n{r.stderr[-4000:]}")
    gens = {}
    for s, mode in GEN_MODES.items():
        with open(os.path.join(work, "out", f"{mode}_generation_results.json")) as f:
            gens[s] = json.load(f)["Generation_Questions"]
    with open(os.path.join(work, "out", "parity_final_evaluation_results.json")) as f:
        final = json.load(f)
    return r.stdout, {"generation": gens, "final": final}


def official_answers(stdout: str) -> dict:
    """{set: [(prompt, answer, correct)]} for the classification and cloze questions, in the script's order."""
    out, starts = {}, [(stdout.index(mark), s) for s, mark in SET_MARKERS]
    starts.sort()
    for i, (pos, s) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(stdout)
        out[s] = [(p, a, ok == "True") for p, a, _, ok in BLOCK.findall(stdout[pos:end])]
    return out


def ours(args) -> dict:
    from vkd_jax import load_hf
    from vkd_jax.benchmarks.mllmu.protocol import EvalConfig, benchmark_sets, evaluate
    from vkd_jax.data.tokenizer import load_tokenizer
    from vkd_jax.preprocess import ImageProcessorConfig

    model = load_hf(args.hf_dir, dtype="float32")
    tok = load_tokenizer(args.hf_dir)
    sets = benchmark_sets(tempfile.mkdtemp(prefix="parity-tfds-"), args.manual_dir, forget_pct=args.forget_ratio)
    cfg = EvalConfig(max_new_tokens=50, batch_size=args.batch_size, cls_scoring="generate", cls_parse="official",
                     test_pose="mean", few_shot=False, image=ImageProcessorConfig.from_hf_dir(args.hf_dir))
    records: dict = {}
    evaluate(model, tok, sets, cfg, records=records)
    return {s: [r for r in rs if r["pose"] in (None, 0)] for s, rs in records.items()}


def compare(off_answers: dict, off_gen: dict, recs: dict) -> dict:
    from vkd_jax.benchmarks.mllmu.protocol import metrics_from_records

    report = {}
    for s, rs in recs.items():
        row = {}
        by_prompt = {}
        for r in rs:
            if r["task"] in ("classification", "cloze"):
                by_prompt.setdefault(r["prompt"], []).append(r)
        agree = {}
        for prompt, ans, _ in off_answers[s]:
            cand = by_prompt.get(prompt, [])
            if not cand:
                continue
            r = cand.pop(0)
            kind = f"{r['form'].lower()}_{'cls' if r['task'] == 'classification' else 'cloze'}"
            mine = r["parsed"] if r["task"] == "classification" else r["reply"]
            theirs = "" if (r["task"] == "classification" and ans == "None") else ans
            a = agree.setdefault(kind, [0, 0])
            a[0] += int(mine == theirs)
            a[1] += 1
        gen = {(g["image_id"], g["question type"], g["question"]): g["generated_answer"] for g in off_gen[s]}
        for r in rs:
            if r["task"] == "generation":
                key = (r["id"], "Image_Textual" if r["form"] == "VQA" else "Pure_Text", r["question"])
                if key in gen:
                    a = agree.setdefault(f"{r['form'].lower()}_gen", [0, 0])
                    a[0] += int(gen[key] == r["reply"])
                    a[1] += 1
        row["agree"] = {k: {"same": v[0], "of": v[1]} for k, v in sorted(agree.items())}
        row["ours"] = {k: v for k, v in metrics_from_records(rs).items() if not k.endswith("_n")}
        report[s] = row
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official_eval", required=True, help="eval.py of a checkout of the MLLMU-Bench repository")
    ap.add_argument("--hf_dir", required=True)
    ap.add_argument("--manual_dir", required=True, help="the benchmark's parquet folders")
    ap.add_argument("--forget_ratio", type=int, default=10)
    ap.add_argument("--python", default=sys.executable, help="the Python that runs the official script")
    ap.add_argument("--official_dtype", default="float32")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parity-") as work:
        stdout, files = run_official(args, work)
    report = compare(official_answers(stdout), files["generation"], ours(args))
    report = {"hf_dir": args.hf_dir, "official_dtype": args.official_dtype, "sets": report,
              "official_final": files["final"]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
