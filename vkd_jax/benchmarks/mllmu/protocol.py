"""MLLMU-Bench evaluation as the benchmark's own script (eval.py of the MLLMU-Bench repository) does it
(shared/spec/mllmu_bench.md "Evaluation"): classification, cloze and generation, each as VQA (with the profile's
image) and QA (text only), on the forget, test, retain and celebrity sets; greedy decoding (`vkd_jax.eval.decode`).

    from vkd_jax.benchmarks.mllmu.protocol import EvalConfig, benchmark_sets, evaluate
    sets = benchmark_sets(data_dir, manual_dir, forget_pct=5)   # forget_5, Test_Set (forget IDs), retain_95, Retain_Set
    records = {}
    results = evaluate(model, tokenizer, sets, EvalConfig(), records=records)   # {set: {metric: value}}

What is the official script's, and kept exactly:
- prompts: `vkd_jax.benchmarks.mllmu.prompts.TEMPLATES`, character for character; tokenized alone (BOS first), `<image>`
  expanded to the image tokens; 50 new tokens (`max_new_tokens`), greedy.
- answers: the whole sequence (prompt and generation, less its first two tokens, special tokens skipped) is decoded
  and the reply is the text after the first `ASSISTANT:` (`prompts.official_answer`).
- classification: the first character of the stripped reply, upper-cased, must be one of A-D and equal the true
  letter (`cls_parse="official"`; `"lenient"` takes the first alphanumeric character instead); cloze: the ground
  truth, lower-cased, is a substring of the reply; generation: ROUGE-1/2/L F (stemmed) and sentence BLEU
  (`vkd_jax.eval.metrics`).
- few-shot (`few_shot=True`, off by default as in the follow-up work): `few_shot_cls` (1) / `few_shot_cloze` (2)
  demo profiles, the script's counts for LLaVA (its 2025-03 version), drawn (seeded) from the evaluated set's own
  IDs, every question of the task and form of those profiles taken from `demo_source` (the script's few-shot
  file; the pipeline passes Full_Set) in the script's demo format (`prompts.classification_demo` / `cloze_demo`),
  VQA demos with their own image; the demo profiles' own questions are skipped; demos precede classification
  prompts on the forget, test and retain sets, cloze prompts on those and the celebrity set (the script's modes);
  generation has none.
What is ours, and a switch:
- Test_Set poses (`test_pose`): "mean" (default) scores every question on every pose of its profile and averages
  over the poses (deterministic, lower variance); "random" is the official reading, one pose per profile and task,
  drawn (seeded) per task as the script's unseeded `random.choice` is.
- `cls_scoring="likelihood"`: the letter whose option text is the likeliest answer (summed log-probs of its tokens
  and EOS), for models trained to answer with the option's text (the embedded tiny model, which does not learn to
  bind letters to options); reports say which scoring a table used.

Every evaluated question (and pose) becomes a record (`RECORD_FIELDS`): set, ID, task, form, item, the exact prompt,
the generation or the option scores, the reply, the parsed answer, the gold answer, whether it counted, and its
scores; `metrics_from_records` computes the results from those records alone, so a saved predictions file and the
results never disagree. Results schema, per set:
    vqa_cls_acc, qa_cls_acc, vqa_cloze_acc, qa_cloze_acc   accuracy in % (0..100)
    vqa_gen_rougeL, qa_gen_rougeL                          mean ROUGE-L F-measure (0..1)
    extras: {vqa,qa}_gen_{rouge1,rouge2,bleu} (0..1), and {kind}_n, the number of questions behind each `{kind}_*`
    value (kind = vqa_cls, qa_cls, vqa_cloze, qa_cloze, vqa_gen, qa_gen). A kind with no questions scores NaN, n = 0.

Batches hold one kind each, are left-padded to a length bucket and filled to `batch_size` with copies of their first
row, so only a few shapes are ever compiled; a row's answer never depends on its batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vkd_jax.benchmarks.mllmu import prompts
from vkd_jax.benchmarks.mllmu.prompts import profile_examples
from vkd_jax.data.pipeline import as_str
from vkd_jax.eval import metrics
from vkd_jax.eval.runner import TASK_KEYS, TASKS, TYPE_KEYS, EvalConfig, Query, Runner

SETS = ("forget", "test", "retain", "celebrity")
METRICS = ("vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL", "qa_gen_rougeL")
EXTRA_METRICS = tuple(f"{t}_gen_{m}" for t in ("vqa", "qa") for m in ("rouge1", "rouge2", "bleu"))
GEN_SCORES = ("rougeL", "rouge1", "rouge2", "bleu")
# the official script's modes: where demonstrations precede the prompt
FEW_SHOT_SETS = {"classification": ("forget", "test", "retain"), "cloze": ("forget", "test", "retain", "celebrity")}
RECORD_FIELDS = ("set", "id", "task", "form", "item", "question", "pose", "prompt", "generation", "option_scores",
                 "reply", "parsed", "gold", "correct", "scores")


@dataclasses.dataclass
class EvalSet:
    """A random-access source of profile records (e.g. `mllmu_bench.load(...)`), optionally restricted to IDs."""
    source: Any
    ids: tuple[str, ...] | None = None


def benchmark_sets(data_dir, manual_dir=None, forget_pct: int = 5) -> dict[str, EvalSet]:
    """The four evaluation sets of the protocol from TFDS `mllmu_bench` (prepared from manual_dir on first use)."""
    from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
    from vkd_jax.data.pipeline import forget_ids
    if forget_pct not in (5, 10, 15):
        raise ValueError(f"forget_pct must be 5, 10 or 15, got {forget_pct}")
    load = lambda c: mllmu_bench.load(c, data_dir, manual_dir)  # noqa: E731
    forget = load(f"forget_{forget_pct}")
    return {"forget": EvalSet(forget), "test": EvalSet(load("Test_Set"), forget_ids(forget)),
            "retain": EvalSet(load(f"retain_{100 - forget_pct}")), "celebrity": EvalSet(load("Retain_Set"))}


def question_keys(source, task: str = "classification", type: str = "Image_Textual",
                  ids: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """(profile ID, item) of every question of one kind, in source order; `item` is the index within the profile's
    questions of that task and type (cloze: within Mask_Task), as the input pipeline's `id`/`item` metadata. Used
    to split the forget VQA questions into the ones a relearning attack trains on and the ones it is scored on."""
    return [(e["id"], e["item"]) for e in _examples(EvalSet(source, _tuple(ids)), task, type)]


# ----------------------------------------------------------------------------------------------- examples

def _tuple(ids):
    return None if ids is None else tuple(ids)


def _examples(es: EvalSet, task: str, typ: str) -> list[dict]:
    keep = set(es.ids) if es.ids is not None else None
    out = []
    for row in range(len(es.source)):
        rec = es.source[row]
        if keep is not None and as_str(rec["ID"]) not in keep:
            continue
        for ex in profile_examples(rec, (task,), (typ,)):
            if ex["task"] == task:
                ex["row"] = row
                out.append(ex)
    return out


def _set_ids(es: EvalSet) -> list[str]:
    if es.ids is not None:
        return list(es.ids)
    return [as_str(es.source[r]["ID"]) for r in range(len(es.source))]


def _num_poses(source, row: int) -> int:
    """Test_Set rows hold `images` (other poses); 0 for a row with one `image`."""
    imgs = source[row].get("images")
    return len(imgs["bytes"]) if imgs is not None and len(imgs["bytes"]) else 0


@dataclasses.dataclass
class _Demos:
    prefix: str
    images: list[tuple[Any, int, None]]  # (source, row, pose=None) of each demo image, in prompt order
    skip: set                            # (ID, item) of the evaluated questions that served as demos


NO_DEMOS = _Demos("", [], set())


def _demos(demo_source, es: EvalSet, set_name: str, task: str, typ: str, cfg: EvalConfig) -> _Demos:
    """The official script's demonstrations for one set, task and form (see the module docstring)."""
    if not cfg.few_shot or task == "generation" or demo_source is None:
        return NO_DEMOS
    ids = _set_ids(es)
    k = min(cfg.few_shot_cls if task == "classification" else cfg.few_shot_cloze, len(ids))
    draw = np.random.default_rng([cfg.seed, SETS.index(set_name) if set_name in SETS else 99, TASKS.index(task)])
    chosen = {ids[i] for i in draw.choice(len(ids), k, replace=False)}
    demo_examples = [ex for ex in _examples(EvalSet(demo_source, tuple(sorted(chosen))), task, typ)]
    prefix, images = "", []
    if set_name in FEW_SHOT_SETS[task]:
        for ex in demo_examples:
            vqa = typ == "Image_Textual"
            if task == "classification":
                prefix += prompts.classification_demo(ex["question"], ex["options"], ex["correct_letter"], vqa)
            else:
                prefix += prompts.cloze_demo(ex["question"], ex["ground_truth"], vqa)
            if vqa:
                images.append((demo_source, ex["row"], None))
    return _Demos(prefix, images, {(ex["id"], ex["item"]) for ex in demo_examples})


def _queries(es: EvalSet, set_name: str, task: str, typ: str, cfg: EvalConfig, demos: _Demos,
             include=None, exclude=None) -> list[Query]:
    items = [ex for ex in _examples(es, task, typ) if (ex["id"], ex["item"]) not in demos.skip]
    if include is not None:
        inc = set(map(tuple, include))
        items = [ex for ex in items if (ex["id"], ex["item"]) in inc]
    if exclude is not None:
        exc = set(map(tuple, exclude))
        items = [ex for ex in items if (ex["id"], ex["item"]) not in exc]
    if cfg.max_questions is not None:
        items = items[:cfg.max_questions]
    out = []
    for ex in items:
        prompt = demos.prefix + ex["prompt"]
        if typ != "Image_Textual":
            out.append(Query(ex, prompt, [], None))
            continue
        n = _num_poses(es.source, ex["row"])
        if n == 0:
            poses = [None]
        elif cfg.test_pose == "mean":
            poses = list(range(n))
        else:  # one draw per profile and task, as the official script's random.choice per row and task
            poses = [int(np.random.default_rng([cfg.seed, ex["row"], TASKS.index(task)]).integers(n))]
        for pose in poses:
            out.append(Query(ex, prompt, demos.images + [(es.source, ex["row"], pose)], pose))
    return out


# ----------------------------------------------------------------------------------------------- scoring

def _record(set_name: str, q: Query, cfg: EvalConfig, generation: str | None = None, decoded: str | None = None,
            option_scores: dict | None = None) -> dict:
    ex, task = q.ex, q.ex["task"]
    rec = {"set": set_name, "id": ex["id"], "task": task, "form": prompts.form(ex["type"] == "Image_Textual"),
           "item": ex["item"], "question": ex["question"], "pose": q.pose, "prompt": q.prompt,
           "generation": generation, "option_scores": option_scores, "reply": None, "correct": None, "scores": None}
    if option_scores is not None:
        rec["parsed"] = max(option_scores, key=option_scores.get)
    else:
        rec["reply"] = prompts.official_answer(decoded, task)
    if task == "classification":
        if option_scores is None:
            rec["parsed"] = prompts.classification_prediction(rec["reply"], cfg.cls_parse)
        rec["gold"] = ex["correct_letter"]
        rec["correct"] = rec["parsed"] == ex["correct_letter"].strip().upper()
    elif task == "cloze":
        rec["parsed"], rec["gold"] = rec["reply"], ex["ground_truth"]
        rec["correct"] = prompts.cloze_correct(rec["reply"], ex["ground_truth"])
    else:
        rec["parsed"], rec["gold"] = rec["reply"], ex["ground_truth"]
        rec["scores"] = {**metrics.rouge(rec["reply"], ex["ground_truth"]),
                         "bleu": metrics.sentence_bleu(rec["reply"], ex["ground_truth"])}
    return rec


def _run(runner: Runner, set_name: str, queries: list[Query]) -> list[dict]:
    if not queries:
        return []
    cfg = runner.cfg
    if queries[0].ex["task"] == "classification" and cfg.cls_scoring == "likelihood":
        return [_record(set_name, q, cfg, option_scores=s) for q, s in zip(queries, runner.option_scores(queries))]
    return [_record(set_name, q, cfg, generation=g, decoded=d) for q, (g, d) in zip(queries, runner.generate(queries))]


def _kind(rec: dict) -> str:
    return f"{rec['form'].lower()}_{TASK_KEYS[rec['task']]}"


def question_values(records: Iterable[dict], tasks: Sequence[str] = TASKS,
                    types: Sequence[str] = ("Image_Textual", "Pure_Text")) -> dict[str, list[tuple[str, float]]]:
    """{metric: [(profile ID, value), ...]}, one value per question (ID, item): the mean over its poses (one record
    unless test_pose="mean" on Test_Set); accuracies in %. A metric is the mean of its values."""
    per_q: dict[str, dict[tuple, list[dict]]] = {}
    for r in records:
        per_q.setdefault(_kind(r), {}).setdefault((r["id"], r["item"]), []).append(r)
    out: dict[str, list[tuple[str, float]]] = {}
    for task in tasks:
        for typ in types:
            kind = f"{TYPE_KEYS[typ]}_{TASK_KEYS[task]}"
            qs = per_q.get(kind, {})
            if task == "generation":
                for m in GEN_SCORES:
                    out[f"{kind}_{m}"] = [(q[0], float(np.mean([r["scores"][m] for r in rs]))) for q, rs in qs.items()]
            else:
                out[f"{kind}_acc"] = [(q[0], float(np.mean([100.0 * bool(r["correct"]) for r in rs])))
                                      for q, rs in qs.items()]
    return out


def metrics_from_records(records: Iterable[dict], tasks: Sequence[str] = TASKS,
                         types: Sequence[str] = ("Image_Textual", "Pure_Text"), intervals: bool = False
                         ) -> dict[str, float]:
    """One set's results from its records (`question_values`): each metric the mean over its questions, `{kind}_n`
    the number of questions; with `intervals`, `{metric}_ci95` by bootstrap over profiles (vkd_jax.eval.intervals)."""
    from vkd_jax.eval.intervals import with_intervals

    values = question_values(records, tasks, types)
    out: dict[str, float] = {}
    for metric, pairs in values.items():
        out[metric] = float(np.mean([v for _, v in pairs])) if pairs else math.nan
        kind = metric[:-len("_acc")] if metric.endswith("_acc") else metric.rsplit("_", 1)[0]
        out[f"{kind}_n"] = len(pairs)
    if intervals:
        out.update({k: v for k, v in with_intervals(values).items() if k.endswith("_ci95")})
    return out


def _as_set(s) -> EvalSet:
    return s if isinstance(s, EvalSet) else EvalSet(s)


def evaluate(model, tokenizer, sets: Mapping[str, Any], cfg: EvalConfig = EvalConfig(),
             records: dict[str, list] | None = None, demo_source=None) -> dict[str, dict[str, float]]:
    """{set name: {metric: value}} (schema in the module docstring) for every set given; a set is an `EvalSet` or
    a bare source. `records={}` also returns, per set, every question's record (`RECORD_FIELDS`). Few-shot needs
    `demo_source` (the official script's few-shot file; the pipeline passes Full_Set)."""
    if cfg.few_shot and demo_source is None:
        raise ValueError("EvalConfig.few_shot needs demo_source (e.g. Full_Set): the source demo profiles are read "
                         "from, as the official script's few-shot file")
    runner = Runner(model, tokenizer, cfg)
    results = {}
    for name, s in sets.items():
        es = _as_set(s)
        runner.forget_images()  # preprocessed images are reused across one set's tasks only (host memory)
        recs: list[dict] = []
        for task in cfg.tasks:
            for typ in cfg.types:
                demos = _demos(demo_source, es, name, task, typ, cfg)
                recs += _run(runner, name, _queries(es, name, task, typ, cfg, demos))
        results[name] = metrics_from_records(recs, cfg.tasks, cfg.types, intervals=True)
        if records is not None:
            records.setdefault(name, []).extend(recs)
    return results


def evaluate_questions(model, tokenizer, source, cfg: EvalConfig = EvalConfig(), *, task: str = "classification",
                       type: str = "Image_Textual", include: Iterable[tuple[str, int]] | None = None,
                       exclude: Iterable[tuple[str, int]] | None = None, ids: Iterable[str] | None = None,
                       set_name: str = "forget", records: list | None = None) -> dict[str, float]:
    """One kind of question on a subset (keys from `question_keys`), zero-shot: e.g. forget VQA classification on
    the forget questions NOT used for relearning:
        keys = question_keys(forget_src); used = keys[:n_relearn]
        acc = evaluate_questions(model, tok, forget_src, cfg, exclude=used)["vqa_cls_acc"]"""
    runner = Runner(model, tokenizer, dataclasses.replace(cfg, few_shot=False))
    es = EvalSet(source, _tuple(ids))
    recs = _run(runner, set_name, _queries(es, set_name, task, type, runner.cfg, NO_DEMOS, include, exclude))
    if records is not None:
        records.extend(recs)
    return metrics_from_records(recs, (task,), (type,))


def forget_vqa_accuracy(model, tokenizer, forget_source, cfg: EvalConfig = EvalConfig(),
                        exclude: Iterable[tuple[str, int]] | None = None) -> float:
    """Forget VQA classification accuracy (%) on the questions not in `exclude` (the relearning attack's AG)."""
    return evaluate_questions(model, tokenizer, forget_source, cfg, exclude=exclude)["vqa_cls_acc"]
