"""The real-weights path in miniature, as a user runs it: `python -m vkd_jax.main --config configs/llava7b.py` on a
tiny LLaVA that transformers saved in float16 in the hub layout (Llama-style tokenizer, processor files) and an
MLLMU-Bench folder of all ten configs in the dataset's parquet schema, with only size and step overrides and the
user's own vanilla model (`stages.vanilla.num_steps=0`, as MLLMU-Bench publishes one), both named by their hub
repo ids and found in a local Hugging Face cache."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_main

from vkd_jax.benchmarks.mllmu import generator as synthetic

pytestmark = pytest.mark.slow  # minutes: end to end / several processes (CI runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = synthetic.WorldConfig(num_people=20, num_celebrities=4, num_facts=2, values_per_fact=4, ft_poses=2,
                              test_poses=2)
OVERRIDES = ["--config.stages.vanilla.num_steps=0", "--config.stages.unlearn.num_steps=2", "--config.data.batch_size=4",
             "--config.data.max_len=128", "--config.data.num_threads=1", "--config.eval.batch_size=4",
             "--config.eval.max_questions=2", "--config.eval.max_new_tokens=8", "--config.stages.relearn.num_steps=2",
             "--config.stages.relearn.fractions=(0.5,)", "--config.checkpoint.every_steps=2",
             # 2 steps at 2e-5 stay below fp16 resolution; a random model's answer CE (~ln 800 = 6.7) is above the
             # GA bound 5, where bounded GA has no gradient by design
             "--config.stages.unlearn.optim.lr=1e-3", "--config.vkd.ga_bound=50"]


def _mllmu_folder(out):
    """The embedded world's ten configs, with ft_Data's `metadata` as the dataset has it: {Question, Answer} pairs
    about the image (no `Type` field, which only the embedded world adds)."""
    synthetic.generate(out, seed=0, cfg=WORLD)
    path = os.path.join(out, "ft_Data", "train-00000-of-00001.parquet")
    t = pq.read_table(path).to_pylist()
    for row in t:
        pairs = json.loads(row["metadata"])
        row["metadata"] = json.dumps([{"Question": p["Question"], "Answer": p["Answer"]} for p in pairs
                                      if p.get("Type", "Image_Textual") == "Image_Textual"])
    pq.write_table(pa.Table.from_pylist(t), path)
    return str(out)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, make_llama_tokenizer, make_hub_llava, hf_cache_put):
    """As users type it: the model and the benchmark by their hub names, from a (temporary) local HF cache."""
    root = tmp_path_factory.mktemp("real_path")
    manual = _mllmu_folder(root / "MLLMU-Bench")
    tok = make_llama_tokenizer(root / "tok", extra_texts=synthetic.benchmark_texts(manual), vocab_size=800)
    hf_dir = make_hub_llava(root / "llava-hf", tok)
    cache = root / "hf_cache"
    hf_dir = hf_cache_put(cache, "tiny-org/llava-1.5-tiny-hf", "model", hf_dir)
    hf_cache_put(cache, "tiny-org/MLLMU-Bench", "dataset", manual)
    work = root / "work"
    r = run_main("llava7b.py", work, "--config.hf_dir=tiny-org/llava-1.5-tiny-hf",
                 "--config.data.manual_dir=tiny-org/MLLMU-Bench", *OVERRIDES,
                 env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}, timeout=1200)
    assert r.returncode == 0, r.stderr[-6000:]
    return hf_dir, work


def test_results_for_all_four_sets(real_run):
    _, work = real_run
    res = json.loads((work / "results.json").read_text())
    assert res["protocol"]["cls_scoring"] == "generate" and res["protocol"]["cls_parse"] == "official"
    assert res["protocol"]["test_pose"] == "mean"
    assert "Fine-tune the `visual_lora_llm` partition" in (work / "report.md").read_text()  # the 7B attack
    for model in ("vanilla", "unlearned"):
        for s in ("forget", "test", "retain", "celebrity"):
            m = res[model][s]
            for k in ("vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL",
                      "qa_gen_rougeL"):
                assert isinstance(m[k], float), (model, s, k, m[k])
    for name in ("vanilla", "unlearned"):
        recs = [json.loads(x) for x in (work / "eval" / f"{name}.predictions.jsonl").read_text().splitlines()]
        assert {r["set"] for r in recs} == {"forget", "test", "retain", "celebrity"}
        # the letter is the greedy generation's, parsed by the official rule
        assert all(r["generation"] is not None for r in recs)
    assert (work / "relearn" / "p0.5" / "predictions.jsonl").is_file()
    # VKD freezes the LLM: every text-only answer is the vanilla one
    van = {(r["set"], r["task"], r["id"], r["item"]): r["generation"] for r in map(
        json.loads, (work / "eval" / "vanilla.predictions.jsonl").read_text().splitlines()) if r["form"] == "QA"}
    unl = {(r["set"], r["task"], r["id"], r["item"]): r["generation"] for r in map(
        json.loads, (work / "eval" / "unlearned.predictions.jsonl").read_text().splitlines()) if r["form"] == "QA"}
    assert van == unl and van


def test_hf_export_is_the_users_model_but_the_visual_side(real_run):
    from safetensors.numpy import load_file
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    hf_dir, work = real_run
    out = work / "hf_export"
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert str(model.dtype) == "torch.float16"
    AutoTokenizer.from_pretrained(out)
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"
    a, b = load_file(os.path.join(hf_dir, "model.safetensors")), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype == np.float16, k
        if k.startswith("language_model."):
            assert a[k].tobytes() == b[k].tobytes(), k  # bitwise the user's LLM
    changed = [k for k in a if a[k].tobytes() != b[k].tobytes()]
    assert changed and all(k.startswith(("vision_tower.", "multi_modal_projector.")) for k in changed)
