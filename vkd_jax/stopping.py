"""When unlearning stops (config.stages.unlearn.stop_rule, its choices in vkd_jax.config_check.CHOICES):

  none   after `num_steps` (the default)
  floor  at the first multiple of `stop_every` steps where the forget score on images no stage trains on (each
         forget person's held-out pose: `Benchmark.stop_score`) is at most the identity-free floor plus
         `stop_margin` points (the floor: the vanilla model shown the mean image, vkd_jax.run_eval), else after
         `num_steps`. How far a fixed step count forgets depends on the vanilla model; the floor is what
         forgetting aims at, so the rule stops each run there. Every check is logged in
         <run>/unlearn/stop_checks.jsonl.
"""

from __future__ import annotations

import json
import os


def unlearn_check(cfg, data, vanilla: dict, model_config, shared_dir: str, run_dir: str):
    """The unlearn stage's `check` (vkd_jax.unlearn.stages.run_stage) for this config, or None."""
    rule = str(cfg.stages.unlearn.stop_rule)
    if rule == "none":
        return None
    import jax

    from vkd_jax.io_utils import AppendFile, makedirs
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params
    from vkd_jax.run_eval import eval_config, identity_free_floor

    floor = identity_free_floor(vanilla, cfg, data, model_config, shared_dir)
    margin, ecfg, graphdef = float(cfg.stages.unlearn.stop_margin), eval_config(cfg), abstract_model(model_config)[0]
    log_dir = os.path.join(run_dir, "unlearn")
    makedirs(log_dir)

    def stop(step: int, params: dict) -> bool:
        score = float(data.stop_score(model_from_flat_params(graphdef, params), ecfg))
        done = score <= floor + margin
        if jax.process_index() == 0:
            with AppendFile(os.path.join(log_dir, "stop_checks.jsonl")) as f:
                f.write(json.dumps({"step": step, "held_out_forget": score, "floor": floor, "margin": margin,
                                    "stop": done}) + "\n")
        return done

    return int(cfg.stages.unlearn.stop_every), stop
