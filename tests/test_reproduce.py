"""vkd_jax.reproduce: pipeline seeds (each its own vanilla model) with unlearning seeds nested below them,
summarised as mean ± std over pipeline seeds; targets checked per seed."""

import json
import os

import pytest

from vkd_jax import comparison, reproduce
from vkd_jax.benchmarks.mllmu.adapter import MLLMUBench
from vkd_jax.config_base import load_config

HEADLINE = MLLMUBench.headline

pytestmark = pytest.mark.slow  # minutes: end to end / several processes (CI runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _micro_config():
    return reproduce.apply_overrides(load_config(os.path.join(ROOT, "configs", "tiny.py")), {
        "data.world.num_people": 20, "data.world.num_celebrities": 8, "data.world.num_facts": 3,
        "data.world.ft_poses": 2, "data.batch_size": 8, "stages.pretrain.num_steps": 2,
        "stages.vanilla.num_steps": 2, "stages.unlearn.num_steps": 2, "eval.max_questions": 2, "eval.batch_size": 4,
        "eval.max_new_tokens": 4, "checkpoint.every_steps": 2, "stages.relearn.fractions": (), "splits": 1})


def test_pipeline_seeds_train_their_own_vanilla_and_nest_unlearning_seeds(tmp_path):
    summary = reproduce.reproduce(_micro_config(), str(tmp_path), ("ga",), (0, 1), (), relearn=False,
                                  unlearn_seeds=(0, 1))
    assert sorted(os.listdir(tmp_path)) == ["comparison.json", "comparison.md", "p0", "p1", "plots"]
    for p in (0, 1):
        assert sorted(os.listdir(tmp_path / f"p{p}" / "runs")) == ["ga_u0", "ga_u1"]
        assert sorted(os.listdir(tmp_path / f"p{p}" / "shared" / "eval")) == [  # once per pipeline seed
            "identity_free_floor.json", "identity_free_floor.predictions.jsonl", "probe_vanilla.json",
            "vanilla.json", "vanilla.predictions.jsonl"]
    res = {(p, u): json.loads((tmp_path / f"p{p}" / "runs" / f"ga_u{u}" / "results.json").read_text())
           for p in (0, 1) for u in (0, 1)}
    assert res[0, 0]["vanilla"] == res[0, 1]["vanilla"]  # one vanilla model under a pipeline seed
    assert res[1, 1]["config"]["seed"] == 1 and res[1, 1]["config"]["unlearn_seed"] == 1
    # each pipeline seed its own vanilla model: other initial weights, so other per-question scores
    v0, v1 = ((tmp_path / f"p{p}" / "shared" / "eval" / "vanilla.predictions.jsonl").read_text() for p in (0, 1))
    assert v0 != v1
    # the unlearning seed changes the unlearned model (the data order and dropout of the unlearn stage)
    u0, u1 = ((tmp_path / "p0" / "runs" / f"ga_u{u}" / "eval" / "unlearned.predictions.jsonl").read_text()
              for u in (0, 1))
    assert u0 != u1
    # mean ± std over pipeline seeds of each pipeline seed's mean over its unlearning seeds
    x = {k: r["unlearned"]["forget"]["vqa_cls_acc"] for k, r in res.items()}
    m0, m1 = (x[0, 0] + x[0, 1]) / 2, (x[1, 0] + x[1, 1]) / 2
    mean, std = summary["ga"]["Forget VQA"]
    assert mean == pytest.approx((m0 + m1) / 2) and std == pytest.approx(abs(m0 - m1) / 2 ** 0.5)
    within = summary["ga"]["within"]["Forget VQA"]
    assert within == pytest.approx((abs(x[0, 0] - x[0, 1]) + abs(x[1, 0] - x[1, 1])) / 2 / 2 ** 0.5)
    assert summary["ga"]["n_pipeline"] == 2 and summary["ga"]["n_runs"] == 4
    md = (tmp_path / "comparison.md").read_text()
    assert "pipeline seeds 0, 1" in md and "unlearning seeds 0, 1" in md and "| ga |" in md and " ± " in md
    assert "## Representation probe" in md and "## Targets on every pipeline seed" in md
    assert "## Spread over unlearning seeds" in md
    assert (tmp_path / "plots" / "methods.png").read_bytes()[:4] == b"\x89PNG"
    # A rerun reads the finished runs instead of training again.
    stamp = os.path.getmtime(tmp_path / "p0" / "runs" / "ga_u0" / "results.json")
    reproduce.reproduce(_micro_config(), str(tmp_path), ("ga",), (0, 1), (), relearn=False, unlearn_seeds=(0, 1))
    assert os.path.getmtime(tmp_path / "p0" / "runs" / "ga_u0" / "results.json") == stamp


def test_targets_are_judged_by_their_intervals_per_seed():
    def ci(x, w=1.0):
        return {"vqa_cls_acc": x, "vqa_cls_acc_ci95": [x - w, x + w]}

    def res(seed, forget, test, retain, celeb, qa, ags, probe_forget=35.0, floor=22.5):
        return {"benchmark": "mllmu", "config": {"seed": seed}, "floors": {"identity_free_forget_vqa_cls_acc": floor},
                "unlearned": {"forget": ci(forget), "test": ci(test)},
                "change": {"retain": ci(retain), "celebrity": ci(celeb),
                           "forget": {"qa_cls_acc": qa, "qa_cls_acc_ci95": [qa, qa]}},
                "relearn": {"fractions": [0.1, 0.5], "ag": ags, "ag_ci95": [[a - 1, a + 1] for a in ags]},
                "probe": {"vanilla": {"forget_acc": 82.0, "retain_acc": 80.0, "chance": 2.0},
                          "unlearned": {"forget_acc": probe_forget, "forget_acc_ci95": [probe_forget - 3,
                                                                                         probe_forget + 3],
                                        "retain_acc": 79.0, "retain_acc_ci95": [76.0, 82.0]}}}
    good = MLLMUBench.judged_targets(res(0, 25.0, 28.0, -1.0, -1.5, 0.0, [3.0, 0.0]))
    assert [t[3] for t in good] == ["met"] * 9, good  # forget, test, retain, celeb, QA, 2 AGs, 2 probe
    assert good[7][0] == "probe forget people <= halfway from vanilla to chance (42.0)"
    bad = MLLMUBench.judged_targets(res(1, 10.0, 40.0, -6.0, -2.5, -2.5, [7.0, 5.5], probe_forget=44.0))
    assert [t[3] for t in bad] == ["not met", "not met", "not met", "undecided", "not met", "not met",
                                   "undecided", "undecided", "met"], bad
    runs = {"vkd": [res(1, 10.0, 40.0, -6.0, -2.5, -2.5, [7.0, 5.5], 44.0),
                    res(0, 25.0, 28.0, -1.0, -1.5, 0.0, [3.0, 0.0])]}
    lines = comparison._targets_table(runs, ["vkd"])
    assert any("| probe forget people <= halfway from vanilla to chance |" in line for line in lines)
    assert "| vkd | MN | MN | MN | MU | MN | MN | MU | MU | MM |" in lines  # seed 0 first


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
    s = comparison.summarise({"vkd": [fake, fake]})
    assert s["vkd"]["Forget VQA"] == (30.0, 0.0) and s["vkd"]["AG@0.5"] == (12.0, 0.0)
    md = comparison.comparison_markdown({"Forget VQA": (99.0, 0.0)}, s, (0, 1), ("vkd",), (), HEADLINE, chance=25.0)
    assert "| vkd | 30.0 ± 0.0 [30.0, 30.0] |" in md and "AG@0.5" in md  # two equal runs: a point interval
