"""vkd_jax.tradeoff: two runs of one pipeline seed compared question by question, the same people drawn for both."""

import json
import os
from types import SimpleNamespace

import ml_collections
import pytest

from vkd_jax import reproduce, tradeoff
from vkd_jax.benchmarks.mllmu.adapter import MLLMUBench

pytestmark = pytest.mark.unit

BENCH = SimpleNamespace(headline=(("forget", "vqa", "Forget VQA", "down"), ("forget", "qa", "Forget QA", "keep"),
                                  ("retain", "vqa", "Retain VQA", "up")),
                        relearn_metric="vqa", chance=25.0)


def _values(forget_vqa, forget_qa, retain_vqa):
    """{set: {metric: [(person, value)]}}: each argument one value per person (p0, p1, ...), one question each."""
    people = [f"p{i}" for i in range(len(forget_vqa))]
    return {"forget": {"vqa": list(zip(people, forget_vqa)), "qa": list(zip(people, forget_qa))},
            "retain": {"vqa": list(zip(people, retain_vqa))}}


def test_the_same_people_are_drawn_for_both_runs():
    # a and b swing by 90 points between people but differ by exactly 1 on each: every resample's difference is 1
    base = [10.0 * i for i in range(10)]
    a = _values([x + 1 for x in base], [100.0] * 10, [x + 1 for x in base])
    b = _values(base, [100.0] * 10, base)
    cols = {c["label"]: c for c in tradeoff.paired_columns(BENCH, a, b, a, [], "t")}
    up = cols["Retain VQA"]
    assert up["diff"] == pytest.approx(1.0) and up["ci95"] == pytest.approx([1.0, 1.0])
    # to lower without a floor: minus max(value, chance); a is higher, so worse by 1 where both are above chance
    assert cols["Forget VQA"]["diff"] == pytest.approx(-1.0) and cols["Forget VQA"]["ci95"][1] < 0
    assert cols["Forget QA"]["diff"] == 0.0 and cols["Forget QA"]["ci95"] == [0.0, 0.0]
    assert tradeoff.verdict(list(cols.values())) == "mixed"


def test_distance_to_the_floor_and_to_vanilla():
    n = 8
    vanilla = _values([100.0] * n, [100.0] * n, [100.0] * n)
    floor = [(f"p{i}", 25.0 if i % 2 else 35.0) for i in range(n)]  # mean 30
    at_floor = _values([30.0] * n, [100.0] * n, [95.0] * n)
    below = _values([0.0] * n, [40.0] * n, [20.0] * n)  # under the floor is no better: distance 30
    cols = {c["label"]: c for c in tradeoff.paired_columns(BENCH, at_floor, below, vanilla, floor, "f")}
    assert cols["Forget VQA"]["diff"] == pytest.approx(30.0)  # -|30-30| - (-|0-30|)
    assert cols["Forget VQA"]["ci95"][0] > 0  # the floor's own spread (25 / 35) is drawn with the same people
    assert cols["Forget QA"]["diff"] == pytest.approx(60.0) and cols["Retain VQA"]["diff"] == pytest.approx(75.0)
    assert tradeoff.verdict(list(cols.values())) == "better"
    back = tradeoff.paired_columns(BENCH, below, at_floor, vanilla, floor, "f")
    assert tradeoff.verdict(back) == "worse"
    assert tradeoff.verdict(tradeoff.paired_columns(BENCH, below, below, vanilla, floor, "f")) == "undecided"
    other = _values([30.0] * (n - 1), [100.0] * (n - 1), [95.0] * (n - 1))  # another split plan
    with pytest.raises(tradeoff.NotPaired):
        tradeoff.paired_columns(BENCH, other, below, vanilla, floor, "f")


def _records(set_name, form, people, correct):
    return [{"set": set_name, "task": "classification", "form": form, "id": p, "item": k, "correct": c}
            for p, cs in zip(people, correct) for k, c in enumerate(cs)]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_reproduce_writes_the_paired_section_from_the_runs_predictions(tmp_path):
    """Two forget splits; VKD at the floor keeping everything, GA collapsing: VKD better on every column."""
    w = str(tmp_path)
    shared = f"{w}/p0/shared"

    def jsonl(recs):
        return "".join(json.dumps(r) + "\n" for r in recs)

    for k in (0, 1):
        forget = [f"f{k}{i}" for i in range(6)]
        retain = [f"r{i}" for i in range(6)]
        sub = "" if k == 0 else f"/split{k}"

        def evaluation(f_vqa, f_qa, r_vqa, forget=forget, retain=retain):
            return jsonl(_records("forget", "VQA", forget, f_vqa) + _records("forget", "QA", forget, f_qa)
                         + _records("retain", "VQA", retain, r_vqa))
        _write(f"{shared}{sub}/eval/vanilla.predictions.jsonl",
               evaluation([[True] * 4] * 6, [[True] * 2] * 6, [[True] * 4] * 6))
        _write(f"{shared}{sub}/eval/identity_free_floor.json",
               json.dumps({"forget_vqa_cls_acc": 25.0, "values": [[p, 25.0] for p in forget for _ in range(4)]}))
        _write(f"{w}/p0/runs/vkd_u0{sub}/eval/unlearned.predictions.jsonl",
               evaluation([[True, False, False, False]] * 6, [[True] * 2] * 6, [[True] * 4] * 6))
        _write(f"{w}/p0/runs/ga_u0{sub}/eval/unlearned.predictions.jsonl",
               evaluation([[False] * 4] * 6, [[False] * 2] * 6, [[True, False, False, False]] * 6))
    for name, f_vqa in (("vkd", 25.0), ("ga", 0.0)):
        split = {"vanilla": {"forget": {"vqa_cls_acc": 100.0}}, "unlearned": {"forget": {"vqa_cls_acc": f_vqa}}}
        res = {"benchmark": "mllmu", "method": name, "config": {"seed": 0}, **split, "splits": [split, split],
               "efficiency": {"unlearn_seconds": 1.0, "trainable_params": 5}}
        _write(f"{w}/p0/runs/{name}_u0/results.json", json.dumps(res))
    reproduce.reproduce(ml_collections.ConfigDict({"seed": 0}), w, ("vkd", "ga"), (0,), (), relearn=False)
    md = (tmp_path / "comparison.md").read_text()
    assert "## vkd against each run, paired by question" in md
    row = next(line for line in md.splitlines() if line.startswith("| ga | 0 |"))
    # forget VQA: |25 - 25| vs |0 - 25|; forget QA: equal to vanilla vs 100 below; retain: 100 vs 25
    assert row == ("| ga | 0 | +25.0 [+25.0, +25.0] | +100.0 [+100.0, +100.0] | +75.0 [+75.0, +75.0] "
                   "| better |")
    assert "- ga: better on 1 of 1." in md
    paired = json.loads((tmp_path / "comparison.json").read_text())["paired"]
    assert paired["reference"] == "vkd" and paired["runs"]["ga"]["0"]["verdict"] == "better"
    # the headline labels are the benchmark's own
    assert [c["label"] for c in paired["runs"]["ga"]["0"]["columns"]] == ["Forget VQA", "Forget QA", "Retain VQA"]
    assert all(lab in [h[2] for h in MLLMUBench.headline] for lab in ("Forget VQA", "Forget QA", "Retain VQA"))
    # bench/claims.py reads the same folder: VKD's text records are the vanilla model's, GA's are not
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "bench", "claims.py"))
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    text = claims.claims_markdown(w, "vkd")
    assert "| vkd | 24 / 24 |" in text and "| ga | 0 / 24 |" in text
    assert "- ga: seed 0: better." in text and "on every seed): holds here" in text
    # another reference (bench/robustness.py without the default): the other way round, GA the reference
    reproduce.reproduce(ml_collections.ConfigDict({"seed": 0}), w, ("vkd", "ga"), (0,), (), relearn=False,
                        paired_reference="ga")
    md = (tmp_path / "comparison.md").read_text()
    assert "## ga against each run, paired by question" in md
    assert "| vkd | 0 | -25.0 [-25.0, -25.0] | -100.0 [-100.0, -100.0] | -75.0 [-75.0, -75.0] | worse |" in md


def test_clear_columns_use_its_headline_rouge_kept_and_faces_raised():
    from vkd_jax.benchmarks.clear.adapter import ClearBench

    people = [f"p{i}" for i in range(5)]

    def vals(forget, rouge, faces):
        return {"forget": {"vqa_acc": [(p, forget) for p in people], "qa_rougeL": [(p, rouge) for p in people]},
                "real_faces": {"vqa_acc": [(p, faces) for p in people]}}
    vanilla = vals(100.0, 1.0, 100.0)
    cols = {c["label"]: c for c in tradeoff.paired_columns(ClearBench, vals(30.0, 1.0, 100.0), vals(0.0, 0.2, 40.0),
                                                           vanilla, [], "clear")}
    assert set(cols) == {"Forget VQA", "Forget QA ROUGE-L", "Real faces"}  # columns without values are left out
    assert cols["Forget VQA"]["diff"] == pytest.approx(-5.0)  # no floor: -max(30, 25) + max(0, 25)
    assert cols["Forget QA ROUGE-L"]["diff"] == pytest.approx(0.8) and cols["Real faces"]["diff"] == 60.0
