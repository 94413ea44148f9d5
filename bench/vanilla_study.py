"""How well the tiny vanilla model learns the embedded benchmark under config overrides (issue 5 item 6 study).

    python bench/vanilla_study.py --workdir W --config configs/tiny.py --config.data.cls_answer=option \
        --config.eval.cls_scoring=likelihood

Runs data generation, pretraining and the vanilla fine-tune of the config, then classification and cloze accuracy
on the forget/test/retain/celebrity sets and the identity-free floor; prints and writes W/study.json. Stages are
cached in W as in `vkd_jax.main`.
"""

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vkd_jax import run_eval, run_models, run_streams  # noqa: E402
from vkd_jax.benchmarks.mllmu.protocol import EvalConfig, evaluate  # noqa: E402
from vkd_jax.models.hf_io import abstract_model, model_from_flat_params  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"),
    "ml_collections config file (path[:variant])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory", required=True)


def study(cfg, workdir: str) -> dict:
    t = time.time()
    data = run_streams.prepare_data(cfg, workdir)
    mc = run_models.build_model_config(cfg, data.tokenizer)
    params = run_models.vanilla_params(cfg, data, workdir, mc)
    train_s = time.time() - t
    model = model_from_flat_params(abstract_model(mc)[0], params)
    sets = data.eval_sets()
    out = evaluate(model, data.tokenizer, sets, EvalConfig(
        tasks=("classification", "cloze"), max_new_tokens=8, batch_size=32,
        cls_scoring=str(cfg.eval.get("cls_scoring", "generate"))))
    res = {s: {k: round(v, 1) for k, v in m.items() if k.endswith("acc")} for s, m in out.items()}
    res.update(train_s=round(train_s), floor=run_eval.identity_free_floor(params, cfg, data, mc, workdir),
               config=json.loads(cfg.to_json_best_effort()))
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "config"}))
    return res


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    study(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
