"""The evaluator on a tiny random LLaVA and a small embedded benchmark: the results schema, records that the metrics
are computed from, the official answer extraction, Test_Set poses, few-shot as the official script builds it, and
likelihood scoring checked against plain forwards."""

import dataclasses
import math
import pathlib

import numpy as np
import pytest
from flax import nnx

from vkd_jax.benchmarks.mllmu import generator as synthetic
from vkd_jax.benchmarks.mllmu import prompts
from vkd_jax.benchmarks.mllmu import protocol as evaluator
from vkd_jax.benchmarks.mllmu.protocol import (
    EXTRA_METRICS,
    METRICS,
    SETS,
    EvalConfig,
    benchmark_sets,
    evaluate,
    evaluate_questions,
    forget_vqa_accuracy,
    question_keys,
)
from vkd_jax.config_base import load_config
from vkd_jax.data import chat
from vkd_jax.data.tokenizer import train_tokenizer
from vkd_jax.eval import runner as runner_lib
from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.llava import Llava

pytestmark = pytest.mark.integration

WORLD = synthetic.WorldConfig(num_people=20, num_celebrities=4, num_facts=2, values_per_fact=4, ft_poses=1,
                              test_poses=2)
CFG = EvalConfig(max_new_tokens=6)
KINDS = ("vqa_cls", "qa_cls", "vqa_cloze", "qa_cloze", "vqa_gen", "qa_gen")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalbench")
    synthetic.generate(root / "manual", seed=0, cfg=WORLD)
    tok = train_tokenizer(synthetic.tokenizer_texts(root / "manual"), root / "tok")
    c = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py"))
    c.model.text_config.vocab_size = tok.vocab_size
    c.model.image_token_index = tok.vocab_size + 3  # outside the vocabulary, and not the tokenizer's <image> id
    model = Llava(config_from_model_dict(c.model, dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    assert model.config.image_token_index != tok.image_token_id  # exercises the <image> id remapping
    from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
    full = mllmu_bench.load("Full_Set", root / "data", root / "manual")
    return model, tok, benchmark_sets(root / "data", root / "manual", forget_pct=10), full


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((isinstance(v, float) and math.isnan(v) and math.isnan(b[k])) or v == b[k]
                                        for k, v in a.items())


def test_full_results_schema_and_records(env):
    model, tok, sets, _ = env
    records = {}
    res = evaluate(model, tok, sets, CFG, records=records)
    assert set(res) == set(SETS)
    n_forget = 2  # 10 % of 20 people
    expected = {"forget": n_forget, "test": n_forget, "retain": 18, "celebrity": 4}
    for name, m in res.items():
        values = set(METRICS) | set(EXTRA_METRICS)
        assert values | {f"{v}_ci95" for v in values} | {f"{k}_n" for k in KINDS} == set(m)
        for v in values:  # the interval of each number holds it
            lo, hi = m[f"{v}_ci95"]
            assert lo <= m[v] <= hi, (name, v, lo, m[v], hi)
        for k in KINDS:  # one question per fact and kind
            assert m[f"{k}_n"] == expected[name] * WORLD.num_facts, (name, k)
        for k, v in m.items():
            if k.endswith("_acc"):
                assert 0.0 <= v <= 100.0, (name, k, v)
            elif not k.endswith(("_n", "_ci95")):
                assert 0.0 <= v <= 1.0, (name, k, v)
        # Test_Set VQA: one record per pose (test_pose="mean"); everything else one per question
        per_q = {k: (WORLD.test_poses if name == "test" and k.startswith("vqa") else 1) for k in KINDS}
        assert len(records[name]) == sum(m[f"{k}_n"] * per_q[k] for k in KINDS)
        assert _same(evaluator.metrics_from_records(records[name], intervals=True), m)  # the records' metrics
    for r in records["forget"]:
        assert set(r) == set(evaluator.RECORD_FIELDS) and r["set"] == "forget"
        head, tail = prompts.TEMPLATES[r["task"], r["form"]].split("{body}")
        assert r["prompt"].startswith(head) and r["prompt"].endswith(tail)
        assert r["question"].replace("__", "[Blank]") in r["prompt"]
        # the reply as eval.py takes it: decode prompt (less two tokens) + generation, text after ASSISTANT:
        decoded = tok.decode(tok.encode(r["prompt"])[2:]) + r["generation"]  # byte-level BPE: decode concatenates
        assert r["reply"] == prompts.official_answer(decoded, r["task"])
        if r["task"] == "classification":
            assert r["parsed"] == prompts.classification_prediction(r["reply"]) and r["gold"] in "ABCD"
            assert r["correct"] == (r["parsed"] == r["gold"])
        elif r["task"] == "generation":
            assert set(r["scores"]) == {"rougeL", "rouge1", "rouge2", "bleu"} and r["correct"] is None
    assert {r["id"] for r in records["test"]} == {r["id"] for r in records["forget"]}  # Test set = forget IDs
    assert {r["pose"] for r in records["test"] if r["form"] == "VQA"} == set(range(WORLD.test_poses))
    assert {r["pose"] for r in records["forget"]} == {None}


def test_test_pose_random_is_one_seeded_draw_per_profile_and_task(env):
    model, tok, sets, _ = env
    cfg = EvalConfig(max_new_tokens=4, test_pose="random", tasks=("classification", "cloze"))
    a, b = {}, {}
    evaluate(model, tok, {"test": sets["test"]}, cfg, records=a)
    evaluate(model, tok, {"test": sets["test"]}, cfg, records=b)
    assert a == b  # seeded
    vqa = [r for r in a["test"] if r["form"] == "VQA"]
    assert len(vqa) == len({(r["task"], r["id"], r["item"]) for r in vqa})  # one pose per question
    for task in ("classification", "cloze"):
        per_profile = {}
        for r in vqa:
            if r["task"] == task:
                per_profile.setdefault(r["id"], set()).add(r["pose"])
        assert all(len(p) == 1 for p in per_profile.values())  # drawn per profile and task, as eval.py
    assert {r["pose"] for r in vqa} <= set(range(WORLD.test_poses))
    # the mean reading averages each question over its poses: its per-question value is the poses' mean
    mean = {}
    evaluate(model, tok, {"test": sets["test"]}, dataclasses.replace(cfg, test_pose="mean"), records=mean)
    by_q = {}
    for r in mean["test"]:
        if r["form"] == "VQA" and r["task"] == "classification":
            by_q.setdefault((r["id"], r["item"]), []).append(100.0 * r["correct"])
    assert all(len(v) == WORLD.test_poses for v in by_q.values())
    got = evaluator.metrics_from_records(mean["test"])["vqa_cls_acc"]
    assert got == pytest.approx(np.mean([np.mean(v) for v in by_q.values()]))


def test_batch_composition_does_not_change_answers(env):
    model, tok, sets, _ = env
    a, b = {}, {}
    cfg = EvalConfig(max_new_tokens=6, tasks=("generation",))
    evaluate(model, tok, {"retain": sets["retain"]}, cfg, records=a)
    evaluate(model, tok, {"retain": sets["retain"]}, dataclasses.replace(cfg, batch_size=5), records=b)
    key = lambda r: (r["id"], r["form"], r["item"])  # noqa: E731
    assert sorted((key(r), r["generation"]) for r in a["retain"]) == sorted((key(r), r["generation"])
                                                                           for r in b["retain"])


def test_relearning_subset(env):
    model, tok, sets, _ = env
    src = sets["forget"].source
    keys = question_keys(src)
    assert len(keys) == 2 * WORLD.num_facts and len(set(keys)) == len(keys)
    used, held_out = keys[:1], keys[1:]
    recs = []
    rest = evaluate_questions(model, tok, src, CFG, exclude=used, records=recs)
    assert rest["vqa_cls_n"] == len(held_out) == len(recs)
    assert {(r["id"], r["item"]) for r in recs} == set(held_out)
    only = evaluate_questions(model, tok, src, CFG, include=held_out)
    assert only == rest
    assert forget_vqa_accuracy(model, tok, src, CFG, exclude=used) == rest["vqa_cls_acc"]
    full = evaluate_questions(model, tok, src, CFG)
    assert full["vqa_cls_n"] == len(keys)
    empty = evaluate_questions(model, tok, src, CFG, include=[])
    assert empty["vqa_cls_n"] == 0 and math.isnan(empty["vqa_cls_acc"])


def test_few_shot_as_the_official_script(env):
    model, tok, sets, full = env
    cfg = EvalConfig(max_new_tokens=4, few_shot=True, tasks=("classification", "cloze"))
    d = evaluator._demos(full, sets["retain"], "retain", "classification", "Image_Textual", cfg)
    # one demo profile from the evaluated set, every VQA classification question of it, with its image
    assert len({k[0] for k in d.skip}) == 1 and len(d.skip) == WORLD.num_facts == len(d.images)
    assert d.prefix.startswith("USER: <image>\nQuestion: ") and d.prefix.count("Correct Answer: ") == len(d.skip)
    assert d.prefix.count("<image>") == len(d.images) and d.prefix.endswith("\n")
    assert evaluator._demos(full, sets["retain"], "retain", "classification", "Pure_Text", cfg).prefix.startswith(
        "USER:\nQuestion: ")
    cz = evaluator._demos(full, sets["retain"], "retain", "cloze", "Image_Textual", cfg)
    assert cz.prefix.startswith("USER:<image>\n") and "[Blank]" in cz.prefix and len(cz.images) == len(cz.skip)
    assert len({k[0] for k in cz.skip}) == 2  # two demo profiles for cloze
    assert evaluator._demos(full, sets["retain"], "retain", "generation", "Pure_Text", cfg) is evaluator.NO_DEMOS
    # classification demos are not shown on the celebrity set (the official modes); its profiles are not in
    # Full_Set, so cloze finds no demos there either
    celeb = evaluator._demos(full, sets["celebrity"], "celebrity", "cloze", "Pure_Text", cfg)
    assert celeb.prefix == "" and not celeb.skip
    cls_c = evaluator._demos(sets["celebrity"].source, sets["celebrity"], "celebrity", "classification",
                             "Image_Textual", cfg)
    assert cls_c.prefix == "" and cls_c.images == [] and len(cls_c.skip) == WORLD.num_facts  # skipped anyway
    recs = {}
    res = evaluate(model, tok, {"retain": sets["retain"], "celebrity": sets["celebrity"]}, cfg, records=recs,
                   demo_source=full)
    assert res["retain"]["vqa_cls_n"] == 17 * WORLD.num_facts and res["retain"]["qa_cloze_n"] == 16 * WORLD.num_facts
    assert res["celebrity"]["vqa_cls_n"] == 4 * WORLD.num_facts
    r = next(x for x in recs["retain"] if x["form"] == "VQA" and x["task"] == "classification")
    assert r["prompt"].startswith("USER: <image>\nQuestion: ") and r["prompt"].count("<image>") == 1 + len(d.images)
    with pytest.raises(ValueError, match="demo_source"):
        evaluate(model, tok, {"retain": sets["retain"]}, cfg)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown tasks"):
        EvalConfig(tasks=("translation",))
    with pytest.raises(ValueError, match="must be >= 1"):
        EvalConfig(batch_size=0)
    for field in ("cls_scoring", "cls_parse", "test_pose"):
        with pytest.raises(ValueError, match=field):
            EvalConfig(**{field: "bogus"})


def test_likelihood_scoring_picks_the_likeliest_option(env):
    """cls_scoring="likelihood": each prediction is the argmax over A-D of log p(option + EOS | prompt), checked
    against a plain full forward of each (prompt, option) sequence, one at a time, without padding."""
    import jax

    from vkd_jax.preprocess import preprocess_one

    model, tok, sets, _ = env
    cfg = EvalConfig(max_new_tokens=4, batch_size=4, cls_scoring="likelihood")
    runner = runner_lib.Runner(model, tok, cfg)
    for set_name in ("forget", "test"):
        es = sets[set_name]
        for typ in ("Image_Textual", "Pure_Text"):
            queries = evaluator._queries(es, set_name, "classification", typ, cfg, evaluator.NO_DEMOS)
            records = evaluator._run(runner, set_name, queries)
            assert len(records) == len(queries) > 0
            for q, rec in zip(queries, records):
                lp = []
                for L in "ABCD":
                    t = chat.tokenize(tok, q.prompt, q.ex["options"][L], model.config.image_seq_length)
                    ids = np.where(t.input_ids == tok.image_token_id, model.config.image_token_index, t.input_ids)
                    px = None
                    if typ == "Image_Textual":
                        px = preprocess_one(runner_lib.image_bytes(es.source, q.ex["row"], q.pose),
                                            runner_lib.image_config(model.config.vision.image_size))[None]
                    logits = np.asarray(model.forward(ids[None], px).logits[0], np.float64)
                    m = logits.max(-1, keepdims=True)
                    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
                    pos = np.nonzero(t.loss_mask)[0]
                    lp.append(sum(logp[p - 1, ids[p]] for p in pos))
                assert rec["parsed"] == "ABCD"[int(np.argmax(lp))], (q.ex["id"], lp)
                np.testing.assert_allclose([rec["option_scores"][L] for L in "ABCD"], lp, atol=1e-3)
                assert rec["correct"] == (rec["parsed"] == q.ex["correct_letter"]) and rec["generation"] is None
    jax.clear_caches()
