"""bench/robustness.py's stated rule for the default: eligible when no kept column is excluded from 3 points of
vanilla by its interval on any seed and forget VQA is not below chance - 5; the pick is nearest the floor."""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _robustness():
    spec = importlib.util.spec_from_file_location("robustness", os.path.join(ROOT, "bench", "robustness.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(seed, forget, retain_ci, celeb_ci, floor=30.0):
    return {"benchmark": "mllmu", "config": {"seed": seed}, "floors": {"identity_free_forget_vqa_cls_acc": floor},
            "unlearned": {"forget": {"vqa_cls_acc": forget}},
            "change": {"retain": {"vqa_cls_acc_ci95": retain_ci}, "celebrity": {"vqa_cls_acc_ci95": celeb_ci}}}


def test_rule_picks_the_eligible_run_nearest_the_floor():
    rule_pick = _robustness().rule_pick
    runs = {
        "keeps-little": [_run(0, 30.0, [-20.0, -10.0], [-1.0, 0.0]), _run(1, 30.0, [-1.0, 0.0], [-1.0, 0.0])],
        "undecided": [_run(0, 36.0, [-5.0, -2.0], [-4.0, -1.0]), _run(1, 33.0, [-1.0, 0.0], [-3.5, -2.9])],
        "keeps-all": [_run(0, 60.0, [-1.0, 0.0], [-1.0, 0.0]), _run(1, 55.0, [-1.0, 0.0], [-1.0, 0.0])],
        "under-chance": [_run(0, 10.0, [-1.0, 0.0], [-1.0, 0.0]), _run(1, 30.0, [-1.0, 0.0], [-1.0, 0.0])],
    }
    pick, lines = rule_pick(runs)
    assert pick == "undecided"  # |36-30|, |33-30|: 4.5; keeps-all is eligible but 27.5 from the floor
    text = "\n".join(lines)
    assert "| keeps-little | 2 | 0: retain | 0.0 | no |" in text
    assert "| under-chance | 2 | - | 10.0 | no (below chance - 5) |" in text
    assert "Pick: undecided." in text
    runs.pop("undecided")
    runs.pop("keeps-all")
    assert rule_pick(runs)[0] is None
