"""How well the tiny vanilla model learns the embedded benchmark under config overrides (issue 5 item 6 study).

    python bench/vanilla_study.py WORKDIR 'cfg.data.cls_answer = "option"; cfg.eval.cls_scoring = "likelihood"'

Runs data generation, pretraining and the vanilla fine-tune of configs/tiny.py (the overrides are Python statements
on `cfg`), then classification and cloze accuracy on the forget/test/retain/celebrity sets and the identity-free
floor; prints and writes WORKDIR/study.json. Stages are cached in WORKDIR as in `vkd_jax.main`.
"""

import json
import os
import sys
import time

from absl import logging

from vkd_jax import experiment
from vkd_jax.eval import EvalConfig, evaluate
from vkd_jax.models.hf_io import abstract_model, model_from_flat_params
from vkd_jax.plan import load_config


def main(workdir: str, overrides: str = "") -> dict:
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"))
    exec(overrides, {}, {"cfg": cfg})  # noqa: S102 - a study tool: the overrides are the user's own statements
    t = time.time()
    data = experiment.prepare_data(cfg, workdir)
    mc = experiment._model_config(cfg, data)
    params = experiment.vanilla_params(cfg, data, workdir, mc)
    train_s = time.time() - t
    model = model_from_flat_params(abstract_model(mc)[0], params)
    sets = experiment.eval_sets(data, cfg)
    out = evaluate(model, data.tokenizer, sets, EvalConfig(
        tasks=("classification", "cloze"), max_new_tokens=8, batch_size=32,
        cls_scoring=str(cfg.eval.get("cls_scoring", "generate"))))
    res = {s: {k: round(v, 1) for k, v in m.items() if k.endswith("acc")} for s, m in out.items()}
    res.update(train_s=round(train_s), floor=experiment.identity_free_floor(params, cfg, data, mc, workdir),
               overrides=overrides)
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    main(*sys.argv[1:])
