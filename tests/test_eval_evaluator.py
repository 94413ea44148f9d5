"""End to end: a tiny random LLaVA evaluated on a small embedded benchmark gives the full results schema."""

import importlib.util
import math
import pathlib

import pytest
from flax import nnx

from vkd_jax.data import synthetic
from vkd_jax.data.tokenizer import train_tokenizer
from vkd_jax.eval import (EXTRA_METRICS, METRICS, SETS, EvalConfig, benchmark_sets, evaluate, evaluate_questions,
                          forget_vqa_accuracy, question_keys)
from vkd_jax.eval import evaluator
from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.llava import Llava

WORLD = synthetic.WorldConfig(num_people=20, num_celebrities=4, num_facts=2, values_per_fact=4, ft_poses=1,
                              test_poses=2)
CFG = EvalConfig(max_new_tokens=6)
KINDS = ("vqa_cls", "qa_cls", "vqa_cloze", "qa_cloze", "vqa_gen", "qa_gen")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalbench")
    synthetic.generate(root / "manual", seed=0, cfg=WORLD)
    tok = train_tokenizer(synthetic.benchmark_texts(root / "manual"), root / "tok")
    spec = importlib.util.spec_from_file_location(
        "tiny_cfg", pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.model.text_config.vocab_size = tok.vocab_size
    c.model.image_token_index = tok.vocab_size + 3  # outside the vocabulary, and not the tokenizer's <image> id
    model = Llava(config_from_model_dict(c.model, dtype="float32", param_dtype="float32"), rngs=nnx.Rngs(0))
    assert model.config.image_token_index != tok.image_token_id  # exercises the <image> id remapping
    return model, tok, benchmark_sets(root / "data", root / "manual", forget_pct=10)


def test_full_results_schema(env):
    model, tok, sets = env
    records = {}
    res = evaluate(model, tok, sets, CFG, records=records)
    assert set(res) == set(SETS)
    n_forget = 2  # 10 % of 20 people
    expected = {"forget": n_forget, "test": n_forget, "retain": 18, "celebrity": 4}
    for name, m in res.items():
        assert set(METRICS) | set(EXTRA_METRICS) | {f"{k}_n" for k in KINDS} == set(m)
        for k in KINDS:  # one question per fact and kind
            assert m[f"{k}_n"] == expected[name] * WORLD.num_facts, (name, k)
        for k, v in m.items():
            if k.endswith("_acc"):
                assert 0.0 <= v <= 100.0, (name, k, v)
            elif not k.endswith("_n"):
                assert 0.0 <= v <= 1.0, (name, k, v)
        assert len(records[name]) == sum(m[f"{k}_n"] for k in KINDS)
    r = records["forget"][0]
    assert set(r) >= {"id", "task", "type", "item", "generated", "target"}
    # Test set = forget IDs only
    assert {r["id"] for r in records["test"]} == {r["id"] for r in records["forget"]}


def test_batch_composition_does_not_change_answers(env):
    model, tok, sets = env
    a, b = {}, {}
    cfg = EvalConfig(max_new_tokens=6, tasks=("generation",))
    evaluate(model, tok, {"retain": sets["retain"]}, cfg, records=a)
    evaluate(model, tok, {"retain": sets["retain"]}, EvalConfig(max_new_tokens=6, tasks=("generation",),
                                                               batch_size=5), records=b)
    key = lambda r: (r["id"], r["type"], r["item"])  # noqa: E731
    assert sorted((key(r), r["generated"]) for r in a["retain"]) == sorted((key(r), r["generated"])
                                                                          for r in b["retain"])


def test_relearning_subset(env):
    model, tok, sets = env
    src = sets["forget"].source
    keys = question_keys(src)
    assert len(keys) == 2 * WORLD.num_facts and len(set(keys)) == len(keys)
    used, held_out = keys[:1], keys[1:]
    rest = evaluate_questions(model, tok, src, CFG, exclude=used)
    assert rest["vqa_cls_n"] == len(held_out)
    only = evaluate_questions(model, tok, src, CFG, include=held_out)
    assert only == rest
    assert forget_vqa_accuracy(model, tok, src, CFG, exclude=used) == rest["vqa_cls_acc"]
    full = evaluate_questions(model, tok, src, CFG)
    assert full["vqa_cls_n"] == len(keys)
    empty = evaluate_questions(model, tok, src, CFG, include=[])
    assert empty["vqa_cls_n"] == 0 and math.isnan(empty["vqa_cls_acc"])


def test_few_shot_switch(env):
    model, tok, sets = env
    demos = evaluator._demos(sets["retain"], "classification", "Image_Textual", 1, seed=0)
    assert demos.prefix.startswith("USER: <image>\n") and demos.prefix.endswith("\n")
    assert demos.prefix.rstrip("\n")[-1] in "ABCD" and len(demos.images) == 1 and len(demos.ids) == 1
    assert len(evaluator._demos(sets["retain"], "cloze", "Pure_Text", 2, seed=0).ids) == 2
    assert evaluator._demos(sets["retain"], "generation", "Pure_Text", 2, seed=0).prefix == ""
    cfg = EvalConfig(max_new_tokens=4, few_shot=True, tasks=("classification", "cloze"))
    res = evaluate(model, tok, {"forget": sets["forget"], "retain": sets["retain"]}, cfg)
    assert res["forget"]["vqa_cls_n"] == 2 * WORLD.num_facts
    # the retain profiles used as demos are not evaluated: 1 for classification, 2 for cloze
    assert res["retain"]["vqa_cls_n"] == 17 * WORLD.num_facts
    assert res["retain"]["qa_cloze_n"] == 16 * WORLD.num_facts
    with pytest.raises(ValueError, match="demo set"):
        evaluate(model, tok, {"forget": sets["forget"]}, cfg)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown tasks"):
        EvalConfig(tasks=("translation",))
    with pytest.raises(ValueError, match="must be >= 1"):
        EvalConfig(batch_size=0)


def test_likelihood_scoring_picks_the_likeliest_option(env):
    """cls_scoring="likelihood": each prediction is the argmax over A-D of log p(option + EOS | prompt), checked
    against a plain full forward of each (prompt, option) sequence, one at a time, without padding."""
    import jax
    import numpy as np

    from vkd_jax.data import prompts
    from vkd_jax.preprocess import preprocess_one

    model, tok, sets = env
    cfg = EvalConfig(max_new_tokens=4, batch_size=4, cls_scoring="likelihood")
    for typ in ("Image_Textual", "Pure_Text"):
        records = []
        es = sets["forget"]
        scores = evaluator._eval_kind(evaluator._Runner(model, tok, cfg), es, "classification", typ,
                                      evaluator._Demos("", [], set()), records=records)
        items = evaluator._examples(es, "classification", typ)
        assert len(records) == len(items) == len(scores) > 0
        for ex, rec in zip(items, records):
            lp = []
            for L in "ABCD":
                t = prompts.tokenize(tok, ex["prompt"], ex["options"][L], model.config.image_seq_length)
                ids = np.where(t.input_ids == tok.image_token_id, model.config.image_token_index, t.input_ids)
                px = None
                if typ == "Image_Textual":
                    px = preprocess_one(evaluator._image_bytes(es.source, ex["row"], cfg.seed),
                                        evaluator.image_config(model.config.vision.image_size))[None]
                logits = np.asarray(model.forward(ids[None], px).logits[0], np.float64)
                logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                    - logits.max(-1, keepdims=True)
                pos = np.nonzero(t.loss_mask)[0]
                lp.append(sum(logp[p - 1, ids[p]] for p in pos))
            assert rec["generated"] == "ABCD"[int(np.argmax(lp))], (ex["id"], lp)
            assert rec["acc"] == 100.0 * (rec["generated"] == ex["correct_letter"])
        jax.clear_caches()


def test_cls_scoring_config_error():
    with pytest.raises(ValueError, match="cls_scoring"):
        EvalConfig(cls_scoring="logits")
