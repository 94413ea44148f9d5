"""The whole pipeline on a micro embedded world: `python -m vkd_jax.main` and `vkd_jax.reproduce`.

Sizes and step counts are tiny so that CI can afford it; quality on the real default run is reported in
README/report, not asserted here. What is asserted: every stage runs, the outputs follow the schema, a rerun reuses
the finished stages, the HF export loads in transformers with the same logits, VKD leaves text-only knowledge
exactly as it was.
"""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_main

pytestmark = pytest.mark.slow  # minutes: end to end / several processes (CI runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MICRO = [
    "--config.data.world.num_people=20", "--config.data.world.num_celebrities=8", "--config.data.world.num_facts=3",
    "--config.data.world.ft_poses=2", "--config.data.batch_size=8", "--config.stages.pretrain.num_steps=3",
    "--config.stages.vanilla.num_steps=3", "--config.stages.unlearn.num_steps=3", "--config.stages.relearn.num_steps=2",
    "--config.stages.relearn.fractions=(0.5,)", "--config.eval.max_questions=3", "--config.eval.batch_size=4",
    "--config.eval.max_new_tokens=6", "--config.mask.num_batches=2", "--config.checkpoint.every_steps=2",
    "--config.splits=1",
]


def _main(workdir, *extra):
    return run_main("tiny.py", workdir, *MICRO, *extra)


@pytest.fixture(scope="module")
def vkd_run(tmp_path_factory):
    w = tmp_path_factory.mktemp("vkd_run")
    r = _main(w, "--config.export_hf=True")
    assert r.returncode == 0, r.stderr[-4000:]
    return w, r


def test_results_schema_and_report(vkd_run):
    w, r = vkd_run
    res = json.loads((w / "results.json").read_text())
    assert res["method"] == "vkd" and res["config"]["forget_ratio"] == 10
    metrics = {"vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL", "qa_gen_rougeL"}
    for model in ("vanilla", "unlearned"):
        assert set(res[model]) == {"forget", "test", "retain", "celebrity"}
        for s, m in res[model].items():
            assert metrics <= set(m), (model, s)
            for k in metrics:
                v = m[k]
                assert v is None or (0 <= v <= (100 if k.endswith("acc") else 1)), (model, s, k, v)
    rl = res["relearn"]
    assert rl["fractions"] == [0.5] and len(rl["forget_vqa_cls_acc"]) == 1
    # cross-fitted at one half: two attacks, every forget question scored by one of them
    assert rl["attacks"] == [2] and (w / "relearn" / "p0.5-w1" / "result.json").is_file()
    halves = [json.loads((w / "relearn" / d / "result.json").read_text()) for d in ("p0.5", "p0.5-w1")]
    assert rl["n_eval"] == [sum(h["n_eval"] for h in halves)] and halves[0]["n_eval"] + halves[1]["n_eval"] >= \
        halves[0]["n_used"] + halves[0]["n_eval"]
    assert rl["ag"][0] == pytest.approx(rl["forget_vqa_cls_acc"][0] - rl["before"][0])
    floor = res["floors"]["identity_free_forget_vqa_cls_acc"]
    assert res["floors"]["chance_cls_acc"] == 25.0 and 0 <= floor <= 100
    eff = res["efficiency"]
    assert eff["steps"] == 3 and eff["unlearn_seconds"] > 0
    assert 0 < eff["trainable_params"] < eff["total_params"]
    assert eff["trainable_params"] < 0.5 * eff["total_params"]  # VKD trains the visual side only
    # VKD never touches the LLM: text-only answers are exactly the vanilla ones.
    for s in ("forget", "retain", "celebrity"):
        assert res["unlearned"][s]["qa_cls_acc"] == res["vanilla"][s]["qa_cls_acc"]
        assert res["unlearned"][s]["qa_gen_rougeL"] == res["vanilla"][s]["qa_gen_rougeL"]
    report = (w / "report.md").read_text()
    assert "| model | Forget VQA | Forget QA | Test VQA |" in report and "## Relearning attack" in report
    lo, hi = res["floors"]["identity_free_forget_vqa_cls_acc_ci95"]
    assert f"identity-free {floor:.1f} [{lo:.1f}, {hi:.1f}]%" in report
    assert res["config"]["eval"]["cls_scoring"] == "likelihood" and "scored by option likelihood" in report
    assert "pretrain and vanilla stages also trained on captioned generic images" in report
    assert f"`vkd.b_g={res['config']['vkd']['b_g']:g}`" in report and res["config"]["vkd"]["b_g"] > 0
    # the streams behind those lines ran: caption NLL in pretraining, generic-image distillation in unlearning
    assert '"nll_caption"' in (w / "pretrain" / "metrics.jsonl").read_text()
    assert '"kd_generic"' in (w / "unlearn" / "metrics.jsonl").read_text()
    for p in ("forget_vs_retain", "training_curves", "relearn"):
        png = (w / "plots" / f"{p}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the console: the headline with an interval beside each number, relearning and the targets judged
    from vkd_jax.report import fmt_ci

    fv = res["unlearned"]["forget"]
    assert "vkd on mllmu: accuracies in % [95% interval]" in r.stdout
    assert fmt_ci(fv["vqa_cls_acc"], fv["vqa_cls_acc_ci95"]) in r.stdout
    assert "relearning AG (points): 0.5: " in r.stdout and "| forget QA change = 0 |" in r.stdout


def test_rerun_reuses_finished_stages(vkd_run):
    w, _ = vkd_run
    stamps = {p: os.path.getmtime(w / p / "done.json") for p in ("pretrain", "vanilla", "unlearn")}
    r = _main(w)
    assert r.returncode == 0, r.stderr[-4000:]
    assert {p: os.path.getmtime(w / p / "done.json") for p in stamps} == stamps
    assert "pretrain:" not in r.stderr and "unlearn:" not in r.stderr  # no progress bar: nothing retrained


def test_hf_export_loads_in_transformers_with_same_logits(vkd_run):
    import torch
    from transformers import LlavaForConditionalGeneration

    import vkd_jax
    from vkd_jax.models.orbax_io import load_model_orbax

    w, _ = vkd_run
    hf = LlavaForConditionalGeneration.from_pretrained(w / "hf_export").eval()
    ours = load_model_orbax(w / "unlearn" / "params")
    assert (w / "hf_export" / "tokenizer.json").exists()
    c = ours.config
    rng = np.random.default_rng(0)
    ids = rng.integers(5, c.text.vocab_size, size=(2, 6))
    ids = np.concatenate([ids[:, :2], np.full((2, c.image_seq_length), c.image_token_index), ids[:, 2:]], 1)
    px = rng.standard_normal((2, 3, c.vision.image_size, c.vision.image_size)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids, px)), ref, atol=1e-4)
    again = vkd_jax.load_hf(w / "hf_export")
    np.testing.assert_array_equal(np.asarray(again(ids, px)), np.asarray(ours(ids, px)))


def test_bad_config_fails_clearly(tmp_path):
    r = _main(tmp_path, "--config.forget_ratio=7")
    assert r.returncode != 0
    assert "forget_ratio=7" in r.stderr


def test_other_world_in_the_same_workdir_fails_clearly(vkd_run):
    w, _ = vkd_run
    r = _main(w, "--config.data.world.num_facts=2")
    assert r.returncode != 0
    # the shared folder's record of the config that made its vanilla model stops it before any data is touched
    assert "pipeline.json" in r.stderr and "data.world.num_facts: 3 (shared) vs 2 (config)" in r.stderr, \
        r.stderr[-2000:]


CLEAR_MICRO = [
    "--config.data.clear_world.num_people=20", "--config.data.clear_world.num_real_faces=6",
    "--config.data.clear_world.num_real_world=6", "--config.data.clear_world.num_generic=10",
    "--config.data.batch_size=8", "--config.stages.pretrain.num_steps=3", "--config.stages.vanilla.num_steps=3",
    "--config.stages.unlearn.num_steps=3", "--config.stages.relearn.num_steps=2",
    "--config.stages.relearn.fractions=(0.5,)", "--config.eval.max_questions=3", "--config.eval.batch_size=4",
    "--config.eval.max_new_tokens=6", "--config.checkpoint.every_steps=2", "--config.splits=1",
    "--config.data.clear_world.eval_images=2",
]


def test_clear_end_to_end(tmp_path):
    """The embedded CLEAR through the same pipeline: its sets and metrics, predictions, the relearning attack, the
    export; VKD leaves the text-only answers exactly as they were."""
    r = run_main("tiny.py:benchmark=clear", tmp_path, *CLEAR_MICRO, "--config.export_hf=True")
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["benchmark"] == "clear" and res["config"]["forget_ratio"] == 10
    for model in ("vanilla", "unlearned"):
        assert set(res[model]) == {"forget", "retain", "real_faces", "real_world"}
        for s in ("forget", "retain"):
            assert 0 <= res[model][s]["vqa_acc"] <= 100 and 0 <= res[model][s]["qa_rougeL"] <= 1
            assert res[model][s]["vqa_n"] == 3 and res[model][s]["qa_n"] == 3
    recs = {m: [json.loads(x) for x in (tmp_path / "eval" / f"{m}.predictions.jsonl").read_text().splitlines()]
            for m in ("vanilla", "unlearned")}
    qa = {m: [(x["set"], x["id"], x["generation"]) for x in rs if x["form"] == "QA"] for m, rs in recs.items()}
    assert qa["vanilla"] == qa["unlearned"] and qa["vanilla"]  # the LLM is untouched: text answers identical
    assert all(x["prompt"].endswith(" ASSISTANT:") for x in recs["vanilla"])
    assert res["relearn"]["fractions"] == [0.5] and len(res["relearn"]["ag"]) == 1
    report = (tmp_path / "report.md").read_text()
    assert "| model | Forget VQA | Forget QA ROUGE-L | Retain VQA |" in report
    row = next(x for x in report.splitlines() if x.startswith("| 0.5 |")).split("|")[1:-1]
    assert all(c.strip() not in ("", "-") for c in row[:6]), row  # attacks, scored, before, after, AG filled
    assert "Fine-tune all params on a fraction" in report
    assert (tmp_path / "hf_export" / "processor_config.json").exists()
    from transformers import LlavaForConditionalGeneration  # the CLEAR export loads as the user's model class

    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf_export")
    assert sum(p.numel() for p in hf.parameters()) == res["efficiency"]["total_params"]


def test_clear_official_reading_gives_forget_quality(tmp_path):
    """eval.clear_reading="official": CLEAR's own metrics for both models, Forget Quality from the KS test against
    the retain-only reference model, which the run trains (it would not for VKD otherwise)."""
    r = run_main("tiny.py:benchmark=clear", tmp_path, *CLEAR_MICRO, "--config.eval.clear_reading=official",
                 "--config.eval.probe=False", "--config.stages.reference.num_steps=3",
                 "--config.stages.relearn.fractions=()", "--config.eval.clear_official_rows=4",
                 "--config.eval.clear_official_max_new_tokens=8")
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "reference" / "params").exists()
    for model in ("vanilla", "unlearned", "reference"):
        off = res[model]["official"]
        f = off["eval_log_forget"]
        assert f["n"] == 4 and len(f["truth_ratios"]) == 4
        assert 0 <= off["model_utility"] <= 1 and 0 <= f["rougeL_recall"] <= 1
        if model != "reference":
            assert 0 < f["forget_quality"] <= 1
    assert res["reference"]["official"]["eval_log_forget"].get("forget_quality") is None
    assert "| model | Forget Quality | Model Utility |" in (tmp_path / "report.md").read_text()


def test_damaged_vanilla_model_stops_the_run_before_any_step(vkd_run, tmp_path):
    """The issue's case: 64 bytes flipped in the vanilla model's params on disk. The run names the folder in one
    error line and exits non-zero before unlearning starts (no unlearn progress, no unlearn checkpoint)."""
    from conftest import flip_bytes

    w, _ = vkd_run
    copy = tmp_path / "w"
    shutil.copytree(w, copy, ignore=shutil.ignore_patterns("unlearn", "split*", "relearn", "results.json"))
    flip_bytes(copy / "vanilla" / "params")
    r = _main(copy)
    assert r.returncode != 0
    assert f"error: {copy / 'vanilla' / 'params'}: this params checkpoint is damaged" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not (copy / "unlearn" / "ckpt").exists()
