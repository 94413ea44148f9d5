"""The relearning attack: fine-tune the unlearned model on a fraction of the forget questions (every forget
question held out at least once from the cross-fitting fraction on), score the held-out ones, and pool the gains.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vkd_jax.io_utils import atomic_write_text, makedirs, read_json_if_exists
from vkd_jax.run_eval import eval_config, write_predictions
from vkd_jax.run_models import on_device, train_stage
from vkd_jax.run_streams import build_pipeline, stream_seed


def relearn_windows(n_keys: int, frac: float, cross_fit_from: float) -> list[list[int]]:
    """The attacks at fraction `frac` of `n_keys` forget questions (positions in their seeded order): one window of
    n = round(frac * n_keys) questions, or, for frac >= cross_fit_from, k = ceil(n_keys / (n_keys - n)) windows,
    each starting where the previous one's held-out block (the n_keys - n questions after it) starts, wrapping:
    the held-out blocks cover every question, so each is scored at least once (at one half, exactly once).
    Window 0 is the single attack's; every window is the same attack, only its held-out part moves."""
    n = min(n_keys - 1, max(1, int(round(frac * n_keys))))
    k = -(-n_keys // (n_keys - n)) if frac >= cross_fit_from else 1
    return [[(j * (n_keys - n) + i) % n_keys for i in range(n)] for j in range(k)]


def relearn_attack(cfg, data, params: dict, model_config, run_dir: str, mesh=None) -> dict:
    """Fine-tune the unlearned model on a fraction p of the forget VQA questions (all params, as an attacker
    would), then score forget VQA on the questions NOT used; AG = after - before (points), over every attack of
    the fraction (relearn_windows: several when cross-fitted, their held-out questions pooled)."""
    from vkd_jax.config_base import stage_seed
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    keys = data.relearn_keys()
    order = np.random.default_rng([stage_seed(cfg, "relearn"), 7]).permutation(len(keys))
    graphdef, _ = abstract_model(model_config)
    ecfg = eval_config(cfg)
    fractions = [float(f) for f in cfg.stages.relearn.fractions]
    out = {"fractions": fractions, "forget_vqa_cls_acc": [], "before": [], "ag": [], "ag_values": [], "attacks": [],
           "steps": int(cfg.stages.relearn.num_steps)}
    for frac in fractions:
        windows = relearn_windows(len(keys), frac, float(cfg.stages.relearn.cross_fit_from))
        results = []
        for j, window in enumerate(windows):
            used = [keys[order[i]] for i in window]
            rdir = relearn_dir(run_dir, frac, j)
            makedirs(rdir)
            cache = os.path.join(rdir, "result.json")
            r = read_json_if_exists(cache)
            if r is None:
                recs: list[dict] = []
                before = data.relearn_score(model_from_flat_params(graphdef, on_device(params)), ecfg, used, recs)
                name = f"forget@{frac:g}" + (f"/w{j}" if j else "")  # window 0: the seed of a single attack
                stream = build_pipeline(data, cfg, data.relearn_stream(used), stream_seed(cfg, "relearn", name),
                                        model_config)
                res = train_stage("relearn", cfg, rdir, params, {"forget": stream}, model_config, data.tokenizer,
                                  mesh=mesh)
                after_recs: list[dict] = []
                after = data.relearn_score(model_from_flat_params(graphdef, res.params), ecfg, used, after_recs)
                write_predictions(os.path.join(rdir, "predictions.jsonl"),
                                  [{**x, "model": m} for m, rs in (("before", recs), ("after", after_recs))
                                   for x in rs])
                # the same questions in the same order before and after: per-question gains, clustered by person
                b, a = _relearn_values(data, recs), _relearn_values(data, after_recs)
                if [p for p, _ in b] != [p for p, _ in a]:
                    raise RuntimeError("relearning: the questions scored before and after differ")
                diffs = [[p, va - vb] for (p, vb), (_, va) in zip(b, a)]
                r = {"fraction": frac, "window": j, "n_used": len(used), "n_eval": len(keys) - len(used),
                     "before": before, "after": after, "ag_values": diffs}
                atomic_write_text(cache, json.dumps(r, indent=2))
            results.append(r)
        # pooled over the attacks, each weighted by the questions it scored
        w = np.asarray([r["n_eval"] for r in results], np.float64)
        w /= w.sum()
        before = float(np.dot(w, [r["before"] for r in results]))
        after = float(np.dot(w, [r["after"] for r in results]))
        out["forget_vqa_cls_acc"].append(after)
        out["before"].append(before)
        out["ag"].append(after - before)
        out["ag_values"].append([tuple(v) for r in results for v in r.get("ag_values", [])])
        out["attacks"].append(len(results))
    return out


def relearn_dir(run_dir: str, frac: float, window: int) -> str:
    """Where the relearning attack at `frac` through window `window` (relearn_windows) keeps its stage and scores."""
    return os.path.join(run_dir, "relearn", f"p{frac:g}" + (f"-w{window}" if window else ""))


def _relearn_values(data, records) -> list[tuple[str, float]]:
    return data.question_values(records)[data.relearn_metric]
