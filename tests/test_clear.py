"""CLEAR: the TFDS builder over fixtures in the dataset's schema (every config kind, bad rows), the embedded
generator, the follow-up protocol's prompts and parsing, and each of the benchmark's own metrics against values
computed by hand."""

import io
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vkd_jax.benchmarks.clear import generator as clear_synthetic
from vkd_jax.benchmarks.clear import prompts as clear_prompts
from vkd_jax.benchmarks.clear import protocol as ev
from vkd_jax.benchmarks.clear import reader as clear
from vkd_jax.benchmarks.mllmu.reader import DataError

pytestmark = pytest.mark.integration

IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMAS = {  # the hub dataset's columns per config kind (shared/spec/clear.md)
    "captions": pa.schema([("image", IMAGE_T), ("caption", pa.string()), ("name", pa.string())]),
    "tofu": pa.schema([("image", IMAGE_T), ("caption", pa.string()), ("question", pa.string()),
                       ("answer", pa.string())]),
    "perturbed": pa.schema([("image", IMAGE_T), ("caption", pa.string()), ("name", pa.string()),
                            ("perturbed_captions", pa.list_(pa.string())), ("paraphrased_caption", pa.string()),
                            ("perturbed_names", pa.list_(pa.string()))]),
    "real_faces": pa.schema([("image", IMAGE_T), ("answer", pa.string()), ("options", pa.list_(pa.string()))]),
    "real_world": pa.schema([("image", IMAGE_T), ("question", pa.string()), ("answer", pa.string()),
                             ("options", pa.list_(pa.string()))]),
}


def _png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": f"{seed}.png"}


def _rows(kind, n=3):
    if kind == "captions":
        return [{"image": _png(i), "caption": f"P{i} is reading.", "name": f"P{i}"} for i in range(n)]
    if kind == "tofu":
        return [{"image": _png(i), "caption": f"P{i} is reading.", "question": None, "answer": None}
                for i in range(n)] + [{"image": None, "caption": None, "question": f"Where was P{i} born?",
                                       "answer": f"P{i} was born in T{i}."} for i in range(n)]
    if kind == "perturbed":
        return [{"image": _png(i), "caption": f"P{i} is reading.", "name": f"P{i}",
                 "perturbed_captions": [f"P{i} is eating.", f"P{i} is running."],
                 "paraphrased_caption": f"Reading: P{i}.", "perturbed_names": ["Q", "R", "S"]} for i in range(n)]
    if kind == "real_faces":
        return [{"image": _png(i), "answer": f"C{i}", "options": ["X", "Y", "Z"]} for i in range(n)]
    return [{"image": _png(i), "question": "What colour?", "answer": "red", "options": ["blue", "green", "gold"]}
            for i in range(n)]


def _write(manual, config, rows, schema):
    d = os.path.join(manual, config)
    os.makedirs(d, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), os.path.join(d, "train-00000-of-00001.parquet"))


@pytest.mark.parametrize("config,kind", [("forget05", "captions"), ("forget05+tofu", "tofu"),
                                         ("forget05_perturbed", "perturbed"), ("retain_perturbed", "perturbed"),
                                         ("real_faces", "real_faces"), ("real_world", "real_world"),
                                         ("full+tofu", "tofu")])
def test_builder_keeps_every_field_of_every_config_kind(tmp_path, config, kind):
    rows = _rows(kind)
    _write(tmp_path / "manual", config, rows, SCHEMAS[kind])
    src = clear.load(config, tmp_path / "data", tmp_path / "manual")
    assert len(src) == len(rows)
    for i, row in enumerate(rows):
        want = {k: v for k, v in row.items() if v is not None}
        got = src[i]
        assert got == want, (config, i)  # text-only +tofu rows come back without an image, lists as lists


def test_bad_rows_name_file_row_and_column(tmp_path):
    rows = _rows("perturbed", 4)
    rows[1]["image"] = {"bytes": b"not an image", "path": "x.png"}
    rows[2]["perturbed_names"] = None  # a missing required value
    _write(tmp_path / "manual", "forget05_perturbed", rows, SCHEMAS["perturbed"])
    with pytest.raises(DataError, match=r"forget05_perturbed/train-00000-of-00001.parquet: row 1, column 'image': "
                                        r"undecodable image"):
        list(clear.iter_rows(tmp_path / "manual", "forget05_perturbed"))
    report = clear.BadRowReport()
    ok = list(clear.iter_rows(tmp_path / "manual", "forget05_perturbed", skip_bad_rows=True, report=report))
    assert len(ok) == 2 and [s["row"] for s in report.skipped] == [1, 2]
    assert report.skipped[1]["column"] == "perturbed_names"


def test_missing_column_is_an_error(tmp_path):
    schema = pa.schema([f for f in SCHEMAS["real_world"] if f.name != "options"])
    _write(tmp_path / "manual", "real_world", [{k: v for k, v in r.items() if k != "options"}
                                               for r in _rows("real_world")], schema)
    with pytest.raises(DataError, match=r"column 'options': missing column"):
        list(clear.iter_rows(tmp_path / "manual", "real_world"))


def test_retain_perturbed_for_a_ratio_keeps_that_splits_people(tmp_path):
    _write(tmp_path / "manual", "retain_perturbed", _rows("perturbed", 5), SCHEMAS["perturbed"])
    _write(tmp_path / "manual", "retain90", _rows("captions", 3), SCHEMAS["captions"])
    pert = clear.load("retain_perturbed", tmp_path / "data", tmp_path / "manual")
    built = clear.retain_perturbed_for(pert, clear.load("retain90", tmp_path / "data", tmp_path / "manual"))
    assert [built[i]["name"] for i in range(len(built))] == ["P0", "P1", "P2"]


def test_generator_is_deterministic_and_splits_partition_the_people(tmp_path):
    cfg = clear_synthetic.ClearWorldConfig(num_people=20, num_real_faces=4, num_real_world=4, num_generic=2)
    clear_synthetic.generate(tmp_path / "a", 3, cfg)
    clear_synthetic.generate(tmp_path / "b", 3, cfg)
    for config in ("full", "forget10_perturbed", "real_faces"):
        a = (tmp_path / "a" / config / "train-00000-of-00001.parquet").read_bytes()
        assert a == (tmp_path / "b" / config / "train-00000-of-00001.parquet").read_bytes(), config
    names = lambda c: {r["name"] for r in pq.read_table(tmp_path / "a" / c / "train-00000-of-00001.parquet")  # noqa
                       .to_pylist()}
    everyone = names("full")
    assert len(everyone) == 20
    for pct in (1, 5, 10):
        f, r = names(f"forget{pct:02d}"), names(f"retain{100 - pct}")
        assert f and not f & r and f | r == everyone
        assert names(f"forget{pct:02d}_perturbed") == f
    assert names("forget01") <= names("forget05") <= names("forget10")  # nested, as the hub's
    assert not names("retain_perturbed") & names("forget10")
    tofu = pq.read_table(tmp_path / "a" / "forget10+tofu" / "train-00000-of-00001.parquet").to_pylist()
    text = [r for r in tofu if r["image"] is None]
    assert text and all(any(n in r["question"] for n in names("forget10")) for r in text)
    world = json.loads((tmp_path / "a" / "world.json").read_text())
    assert world["benchmark"] == "clear" and len(world["people"]) == 24


def test_followup_prompt_and_parse():
    assert clear_prompts.chat_prompt("What?\nA. x\nB. y\n", True) == "USER: <image>\nWhat?\nA. x\nB. y\n ASSISTANT:"
    assert clear_prompts.chat_prompt("Where was P born?", False) == "USER: Where was P born? ASSISTANT:"
    assert clear_prompts.options_block(["a", "b", "c"]) == "A. a\nB. b\nC. c"
    assert clear_prompts.mc_letter(" (b) Rome") == "B" and clear_prompts.mc_letter("...") == ""
    assert clear_prompts.mc_letter("c.") == "C"


def test_official_metrics_by_hand():
    para = np.array([1.0, 2.0])
    pert = [np.array([2.0, 4.0]), np.array([1.0])]  # per-row perturbed means 3.0 and 1.0 (counts may differ)
    tr_forget, tr = ev.truth_ratio(para, pert, forget=True)
    np.testing.assert_allclose(tr, [math.exp(2.0), math.exp(-1.0)])
    assert tr_forget == pytest.approx((math.exp(-2.0) + math.exp(-1.0)) / 2)
    tr_retain, _ = ev.truth_ratio(para, pert, forget=False)
    assert tr_retain == pytest.approx((1 - math.exp(-2.0) + 0.0) / 2)
    assert ev.prob(np.array([0.0, math.log(2)]), None) == pytest.approx((1 + 0.5) / 2)
    p = ev.prob(np.array([0.0, 0.0]), [np.array([0.0, math.log(2)]), np.array([0.0])])  # 1/(1+1+.5), 1/(1+1)
    assert p == pytest.approx((1 / 2.5 + 0.5) / 2)
    assert ev.model_utility([0.5, 0.25]) == pytest.approx(2 / (2 + 4)) and ev.model_utility([0.5, 0.0]) == 0.0
    assert ev.forget_quality(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert ev.forget_quality(np.arange(10.0), np.arange(10.0) + 100) < 1e-3
    from vkd_jax.eval import metrics

    # ROUGE-L recall: LCS / reference length (stemmed tokens): "the cat sat" vs "the cat sat on the mat" -> 3/6
    assert metrics.rouge_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)


def test_followup_metrics_from_records():
    recs = [{"task": "name_mc", "correct": True}, {"task": "name_mc", "correct": False},
            {"task": "qa_generation", "scores": {"rougeL": 0.5, "rouge1": 0.6, "rouge2": 0.1, "bleu": 0.2}},
            {"task": "qa_generation", "scores": {"rougeL": 1.0, "rouge1": 1.0, "rouge2": 1.0, "bleu": 1.0}}]
    m = ev.followup_metrics(recs)
    assert m["vqa_acc"] == 50.0 and m["vqa_n"] == 2 and m["qa_n"] == 2
    assert m["qa_rougeL"] == pytest.approx(0.75) and m["qa_bleu"] == pytest.approx(0.6)


def test_clear_forget_splits_are_disjoint_blocks_of_people(tmp_path, load_cfg):
    """Forget split k of the embedded CLEAR: its people's images, text rows and held-out renderings; the rest is
    its retain side; split 0 is forget10 itself."""
    from vkd_jax.benchmarks import make_benchmark

    cfg = load_cfg("tiny:benchmark=clear")
    cfg.data.clear_world.update(dict(num_people=20, num_real_faces=4, num_real_world=4, num_generic=4))
    bench = make_benchmark(cfg, str(tmp_path))
    assert bench.num_splits() == 10
    names = lambda rows: {rows[i]["name"] for i in range(len(rows))}  # noqa: E731
    everyone = names(bench.load("full"))
    assert names(bench.with_split(0).load("forget10")) == names(bench.load("forget10"))
    seen = set()
    for k in range(10):
        b = bench.with_split(k)
        forget = names(b.load("forget10"))
        assert forget == (b.split_forget_names() if k else forget) and len(forget) == 2 and not seen & forget
        seen |= forget
        assert names(b.load("retain90")) == everyone - forget
        assert names(b.load("forget10_perturbed")) == forget
        assert not names(b.load("retain_perturbed")) & forget
        text = b.load("forget10+tofu")
        assert all(any(n in (text[i].get("question") or "") for n in forget) or text[i].get("name") in forget
                   for i in range(len(text)))
        assert len(text) == len(bench.load("forget10+tofu"))
    assert seen == everyone
