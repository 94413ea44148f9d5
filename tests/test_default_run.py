"""configs/tiny.py as shipped, end to end: the default VKD from the shipped vanilla model (its own file: the
longest test, so that `make test`'s workers, one per file, share the end-to-end runs)."""

import json

import pytest
from conftest import run_main

pytestmark = pytest.mark.slow  # minutes: end to end (CI runs it)


def test_the_default_starts_from_the_shipped_model_forgets_and_pools_its_splits(tmp_path):
    """configs/tiny.py as shipped: the run loads the published vanilla model (no vanilla training in the work
    directory), unlearns two forget splits from it with the default VKD and pools them, with a 95% interval beside
    every number; the forgetting is measurable (the whole interval of the forget VQA change far below 0) and the
    text answers are exactly the vanilla ones."""
    r = run_main("tiny.py", tmp_path, "--config.vanilla_model=shipped", "--config.splits=2",
                 "--config.stages.relearn.num_steps=2", "--config.stages.relearn.fractions=(0.5,)",
                 "--config.eval.max_new_tokens=4", "--config.eval.retain_max_profiles=4")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "vanilla model: the shipped mllmu_seed0" in r.stderr
    assert not (tmp_path / "vanilla").exists() and not (tmp_path / "pretrain").exists()
    assert "Downloading and preparing dataset" not in r.stdout + r.stderr
    assert "dataset_info.json" not in r.stdout + r.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert [s["split"] for s in res["splits"]] == [0, 1]
    forget = res["unlearned"]["forget"]
    assert forget["vqa_cls_n"] == sum(s["unlearned"]["forget"]["vqa_cls_n"] for s in res["splits"])
    lo, hi = forget["vqa_cls_acc_ci95"]
    assert lo <= forget["vqa_cls_acc"] <= hi
    assert res["vanilla"]["forget"]["vqa_cls_acc"] > 90  # the shipped model knows its people from their images
    assert res["change"]["forget"]["vqa_cls_acc_ci95"][1] < -30  # and the unlearned one measurably does not
    for s in ("forget", "retain", "celebrity"):  # the LLM is frozen: every text answer as before
        assert res["change"][s]["qa_cls_acc"] == 0 and res["change"][s]["qa_cls_acc_ci95"] == [0.0, 0.0]
    assert len(res["relearn"]["ag_ci95"]) == 1 and res["floors"]["identity_free_forget_vqa_cls_acc_ci95"]
    assert res["probe"]["unlearned"]["forget_acc_ci95"]
    report = (tmp_path / "report.md").read_text()
    assert "2 disjoint forget splits" in report and "## Targets, judged by the interval" in report
    assert "| forget QA change = 0 | 0.0 [0.0, 0.0] | met |" in report
