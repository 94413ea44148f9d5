"""A run's evaluations, cached per model in the work directory: the benchmark's own evaluation (results and every
question's record), the identity-free floor, the representation probe, Forget Quality against the reference, and
the pooling of forget splits (per-question values pooled, then the mean and a bootstrap over people).
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from absl import logging

from vkd_jax.io_utils import atomic_write_text, read_json_if_exists
from vkd_jax.run_models import on_device
from vkd_jax.run_streams import hf_image_processor, image_processor


def eval_config(cfg):
    from vkd_jax.eval.runner import EvalConfig

    e = cfg.eval
    return EvalConfig(max_new_tokens=int(e.max_new_tokens), batch_size=int(e.batch_size), seed=int(cfg.seed),
                      image=hf_image_processor(cfg),
                      few_shot=bool(e.few_shot), few_shot_cls=int(e.few_shot_cls),
                      few_shot_cloze=int(e.few_shot_cloze),
                      max_questions=int(e.max_questions) or None, cls_scoring=str(e.cls_scoring),
                      cls_parse=str(e.cls_parse), test_pose=str(e.test_pose))


def write_predictions(path: str, records: list[dict]) -> None:
    """One JSON record per evaluated question (and pose), as `vkd_jax.benchmarks.mllmu.protocol.RECORD_FIELDS`."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _none_for_nan(x):
    if isinstance(x, dict):
        return {k: _none_for_nan(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate_cached(name: str, params: dict, cfg, data, model_config, out_dir: str) -> dict:
    """The benchmark's evaluation of one model, cached in <out_dir>/eval/<name>.json beside its per-question
    predictions (<name>.predictions.jsonl)."""
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(out_dir, "eval", f"{name}.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached
    graphdef, _ = abstract_model(model_config)
    model = model_from_flat_params(graphdef, on_device(params))
    t = time.time()
    records: dict[str, list] = {}
    res = _none_for_nan(data.evaluate(model, eval_config(cfg), records))
    logging.info("evaluated %s in %.1f s", name, time.time() - t)
    # the predictions first: the metrics file marks the evaluation finished
    write_predictions(os.path.join(out_dir, "eval", f"{name}.predictions.jsonl"),
                      [r for s in records for r in records[s]])
    atomic_write_text(path, json.dumps(res, indent=2, sort_keys=True))
    return res


def identity_free_floor(params: dict, cfg, data, model_config, shared: str) -> float:
    """Forget VQA accuracy of a model shown the mean image instead of the person: what the frozen LLM answers
    without identity (the floor a well-forgotten model should sit at, rather than far below chance)."""

    return identity_free_floor_values(params, cfg, data, model_config, shared)[0]


def identity_free_floor_values(params: dict, cfg, data, model_config, shared: str) -> tuple[float, list]:
    """(the floor, its per-question [person, value] pairs), cached in <shared>/eval/identity_free_floor.json."""
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(shared, "eval", "identity_free_floor.json")
    cached = read_json_if_exists(path)
    if cached is None:
        model = model_from_flat_params(abstract_model(model_config)[0], on_device(params))
        records: list[dict] = []
        acc = data.identity_free_floor(model, eval_config(cfg), records)
        write_predictions(os.path.join(shared, "eval", "identity_free_floor.predictions.jsonl"), records)
        cached = {"forget_vqa_cls_acc": acc, "image": "the mean of the training images",
                  "values": data.question_values(records)[data.relearn_metric]}
        atomic_write_text(path, json.dumps(cached))
    return cached["forget_vqa_cls_acc"], [tuple(v) for v in cached.get("values", [])]


def probe_cached(name: str, params: dict, cfg, data, model_config, out_dir: str) -> dict:
    """The representation probe attack on one model (vkd_jax.eval.probe), cached in eval/probe_<name>.json."""
    from vkd_jax.eval.probe import probe_attack
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(out_dir, "eval", f"probe_{name}.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached
    model = model_from_flat_params(abstract_model(model_config)[0], on_device(params))
    res = _none_for_nan(probe_attack(model, data.probe_data(), image_processor(cfg, model_config)))
    atomic_write_text(path, json.dumps(res, indent=2, sort_keys=True))
    return res


def read_eval_values(data, out_dir: str, name: str) -> dict:
    """{set: {metric: [(person, value), ...]}} of a cached evaluation, from its predictions file."""
    from vkd_jax.io_utils import read_text

    by_set: dict[str, list] = {}
    for line in read_text(os.path.join(out_dir, "eval", f"{name}.predictions.jsonl")).splitlines():
        if line.strip():
            r = json.loads(line)
            by_set.setdefault(r["set"], []).append(r)
    return {s: data.question_values(recs) for s, recs in by_set.items()}


def pool_splits(data, splits: list[dict]) -> dict:
    """The run's results over its forget splits: every metric the mean over all splits' questions, its interval a
    bootstrap over people (a person evaluated in several splits is one cluster); per-split results beside."""
    from vkd_jax.eval.intervals import cluster_ci, with_intervals

    def pooled(model):
        out = {}
        for set_name in splits[0]["values"][model]:
            metrics = splits[0]["values"][model][set_name]
            values = {m: [v for s in splits for v in s["values"][model].get(set_name, {}).get(m, [])]
                      for m in metrics}
            res = with_intervals(values)
            for m, pairs in values.items():
                kind = m[:-len("_acc")] if m.endswith("_acc") else m.rsplit("_", 1)[0]
                res[f"{kind}_n"] = len(pairs)
            out[set_name] = _none_for_nan(res)
        if "official" in splits[0][model]:  # CLEAR's own reading: the benchmark's own forget split
            out["official"] = splits[0][model]["official"]
        return out

    res = {"vanilla": pooled("vanilla"), "unlearned": pooled("unlearned"), "change": {}}
    # unlearned - vanilla, question by question (both scored the same questions in the same order), by person
    for set_name, metrics in splits[0]["values"]["unlearned"].items():
        diffs = {}
        for m in metrics:
            pairs = []
            for s in splits:
                u = s["values"]["unlearned"].get(set_name, {}).get(m, [])
                v = s["values"]["vanilla"].get(set_name, {}).get(m, [])
                if [p for p, _ in u] != [p for p, _ in v]:
                    raise RuntimeError(f"split {s['split']}: the vanilla and unlearned {set_name} questions differ")
                pairs += [(p, a - b) for (p, a), (_, b) in zip(u, v)]
            diffs[m] = pairs
        res["change"][set_name] = {k: v for k, v in _none_for_nan(with_intervals(diffs, "change/")).items()}
    floor = [v for s in splits for v in s["floor_values"]]
    res["floors"] = {"chance_cls_acc": data.chance,
                     "identity_free_forget_vqa_cls_acc": float(np.mean([v for _, v in floor])) if floor
                     else splits[0]["floor"],
                     "identity_free_forget_vqa_cls_acc_ci95": list(cluster_ci(*zip(*floor), "floor")) if floor
                     else None}
    if all("relearn" in s for s in splits):
        r0 = splits[0]["relearn"]
        rl = {"fractions": r0["fractions"], "steps": r0["steps"], "attacks": r0["attacks"], "forget_vqa_cls_acc": [],
              "before": [], "ag": [], "ag_ci95": [], "n_eval": []}
        for i in range(len(r0["fractions"])):
            diffs = [v for s in splits for v in s["relearn"]["ag_values"][i]]
            weights = [len(s["relearn"]["ag_values"][i]) for s in splits]
            w = np.asarray(weights, np.float64) / max(sum(weights), 1)
            before = float(np.dot(w, [s["relearn"]["before"][i] for s in splits]))
            after = float(np.dot(w, [s["relearn"]["forget_vqa_cls_acc"][i] for s in splits]))
            rl["before"].append(before)
            rl["forget_vqa_cls_acc"].append(after)
            rl["ag"].append(after - before)
            rl["ag_ci95"].append(list(cluster_ci(*zip(*diffs), f"ag{i}")) if diffs else None)
            rl["n_eval"].append(len(diffs))
        res["relearn"] = rl
    if all("probe" in s for s in splits):
        res["probe"] = {m: pool_probe([s["probe"][m] for s in splits]) for m in ("vanilla", "unlearned")}
    internal = ("values", "floor_values", "unlearned_params", "unlearn_steps")  # pooled above, or in efficiency
    res["splits"] = [{k: v for k, v in s.items() if k not in internal} for s in splits]
    for s in res["splits"]:
        if "relearn" in s:
            s["relearn"] = {k: v for k, v in s["relearn"].items() if k != "ag_values"}
    return res


def pool_probe(runs: list[dict]) -> dict:
    """The probe's accuracies over splits: each split's held-out images (clustered by split and person)."""
    from vkd_jax.eval.intervals import with_intervals

    out = dict(runs[0])
    for key in ("n_forget_test", "n_retain_test"):
        out[key] = sum(int(r.get(key, 0)) for r in runs)
    for key in ("forget_acc", "retain_acc"):
        items = [(f"{k}/{lab}", 100.0 * c) for k, r in enumerate(runs) for lab, c in r.get(f"{key}_items", [])]
        if items:
            out.update(with_intervals({key: items}))
    for key in list(out):
        if key.endswith("_items"):
            out.pop(key)
    return out
