"""vkd_jax.reproduce: several runs from one shared vanilla model, summarised as mean ± std over seeds."""

import json
import os

import pytest

from vkd_jax import reproduce
from vkd_jax.config_base import load_config

pytestmark = pytest.mark.slow  # minutes: end to end / several processes (CI runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _micro_config():
    return reproduce.apply_overrides(load_config(os.path.join(ROOT, "configs", "tiny.py")), {
        "data.world.num_people": 20, "data.world.num_celebrities": 8, "data.world.num_facts": 3,
        "data.world.ft_poses": 2, "data.batch_size": 8, "stages.pretrain.num_steps": 2,
        "stages.vanilla.num_steps": 2, "stages.unlearn.num_steps": 2, "eval.max_questions": 2, "eval.batch_size": 4,
        "eval.max_new_tokens": 4, "checkpoint.every_steps": 2, "stages.relearn.fractions": ()})


def test_two_seeds_share_one_vanilla_model(tmp_path):
    summary = reproduce.reproduce(_micro_config(), str(tmp_path), ("ga",), (0, 1), (), relearn=False)
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["ga_s0", "ga_s1"]
    assert sorted(os.listdir(tmp_path / "shared" / "eval")) == [  # once, with their per-question predictions
        "identity_free_floor.json", "identity_free_floor.predictions.jsonl", "vanilla.json",
        "vanilla.predictions.jsonl"]
    r0 = json.loads((tmp_path / "runs" / "ga_s0" / "results.json").read_text())
    r1 = json.loads((tmp_path / "runs" / "ga_s1" / "results.json").read_text())
    assert r0["vanilla"] == r1["vanilla"] and r1["config"]["seed"] == 1
    mean, std = summary["ga"]["Forget VQA"]
    xs = [r["unlearned"]["forget"]["vqa_cls_acc"] for r in (r0, r1)]
    assert mean == pytest.approx(sum(xs) / 2) and std == pytest.approx(abs(xs[0] - xs[1]) / 2 ** 0.5)
    md = (tmp_path / "comparison.md").read_text()
    assert "| vanilla |" in md and "| ga |" in md and " ± " in md
    assert (tmp_path / "plots" / "methods.png").read_bytes()[:4] == b"\x89PNG"
    # A rerun reads the finished runs instead of training again.
    stamp = os.path.getmtime(tmp_path / "runs" / "ga_s0" / "results.json")
    reproduce.reproduce(_micro_config(), str(tmp_path), ("ga",), (0, 1), (), relearn=False)
    assert os.path.getmtime(tmp_path / "runs" / "ga_s0" / "results.json") == stamp


def test_ablation_overrides_and_tables():
    cfg = _micro_config()
    table = reproduce.ablations_for(cfg)
    # each names the switch it moves away from the config's own default
    masks = bool(cfg.stages.unlearn.use_masks)
    assert ("vkd-no-mask" in table) == masks and ("vkd-with-mask" in table) == (not masks)
    assert ("vkd-no-generic" in table) == (cfg.vkd.b_g > 0)
    assert "vkd-projector-only" in table and "vkd-whole-visual-side" not in table  # the default trains it all
    flipped = reproduce.ablations_for(reproduce.apply_overrides(cfg, {"stages.unlearn.use_masks": True,
                                                                      "vkd.b_g": 0.0}))
    assert "vkd-no-mask" in flipped and "vkd-with-mask" not in flipped and "vkd-no-generic" not in flipped
    with pytest.raises(ValueError, match="unknown ablations.*vkd-nope"):
        reproduce.reproduce(cfg, "/nonexistent", (), (0,), ("vkd-nope",))
    for name, (method, overrides) in table.items():
        c = reproduce.apply_overrides(cfg, {"method": method, **overrides})
        for dotted, value in overrides.items():
            node = c
            for part in dotted.split("."):
                node = node[part]
            assert node == (tuple(value) if isinstance(value, (list, tuple)) else value), (name, dotted)
    fake = {"unlearned": {"forget": {"vqa_cls_acc": 30.0, "qa_cls_acc": 90.0}, "retain": {"vqa_cls_acc": 95.0}},
            "efficiency": {"unlearn_seconds": 10.0, "trainable_params": 7},
            "relearn": {"fractions": [0.5], "ag": [12.0]}}
    s = reproduce.summarise({"vkd": [fake, fake]})
    assert s["vkd"]["Forget VQA"] == (30.0, 0.0) and s["vkd"]["AG@0.5"] == (12.0, 0.0)
    md = reproduce.comparison_markdown({"forget": {"vqa_cls_acc": 99.0}}, s, (0, 1), ("vkd",), ())
    assert "| vkd | 30.0 ± 0.0 |" in md and "AG@0.5" in md


def test_tradeoff_lines_compare_means_with_chance_floor_and_ties():
    labels = [h[2] for h in reproduce.HEADLINE]

    def row(**kw):
        r = {lab: (50.0, 0.0) for lab in labels}
        r.update(seconds=(1.0, 0.0), trainable=(7, 0.0))
        r.update({k.replace("_", " "): v for k, v in kw.items()})
        return r
    vanilla = {"forget": {"qa_cls_acc": 100.0}}
    s = {"vkd": row(**{"Forget_VQA": (30.0, 0.0), "Forget_QA": (100.0, 0.0), "Retain_VQA": (95.0, 2.0)}),
         "ga": row(**{"Forget_VQA": (5.0, 0.0), "Forget_QA": (40.0, 0.0), "Retain_VQA": (20.0, 0.0)}),
         "idk": row(**{"Forget_VQA": (40.0, 0.0), "Forget_QA": (90.0, 0.0), "Retain_VQA": (93.5, 0.5)}),
         "npo": row(**{"Forget_VQA": (27.0, 0.0), "Forget_QA": (100.0, 0.0), "Retain_VQA": (95.0, 0.0)})}
    ga = reproduce.tradeoff_line(vanilla, s, "ga")
    assert ga.startswith("- VKD does not beat ga's trade-off: worse on Forget VQA 30.0 vs 5.0;")
    assert "better on Forget QA 100.0 vs 40.0; Retain VQA 95.0 vs 20.0" in ga and "below chance" in ga
    idk = reproduce.tradeoff_line(vanilla, s, "idk")  # Retain VQA 95 +- 2 vs 93.5: a tie, not a win
    assert idk == "- VKD beats idk's trade-off (better on Forget VQA 30.0 vs 40.0; Forget QA 100.0 vs 90.0)."
    npo = reproduce.tradeoff_line(vanilla, s, "npo")  # 27 vs 30: above chance, a loss by 3 points
    assert npo == "- VKD does not beat npo's trade-off: worse on Forget VQA 30.0 vs 27.0."
    md = reproduce.comparison_markdown({"forget": {"qa_cls_acc": 100.0}}, s, (0,), ("vkd", "ga", "idk"), ())
    assert "## Trade-off against VKD" in md and ga in md and idk in md
