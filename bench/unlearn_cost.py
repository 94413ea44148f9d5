"""What one unlearning costs per method, as a config runs it: the unlearn stage's own step (the method, its
streams, its partition and optimiser, read by `stages.stage_training`, as the stage reads them) times its steps.

  python bench/unlearn_cost.py --config configs/tiny.py [--candidates distill-100-400] \
      [--projection configs/llava7b.py] [--write bench/RESULTS.md]

Timed: the config's model (the shipped vanilla model of the embedded MLLMU-Bench for configs/tiny.py), one
synthetic batch per stream the method reads (`data.batch_size` rows, `--length` tokens with the image tokens, the
last 8 the answer), every method built first, then stepped interleaved (`--repeats` rounds after a warm-up round);
medians, and ratios as medians of per-round ratios. Projected: the same steps' matmul FLOPs (jaxpr, abstract
shapes, nothing run) for the projection config's model (LLaVA-1.5-7B). MMUnlearner is left out (its step needs
the masks stage's saliency masks; its loss is GD's on the whole model, its masks stage is extra).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import append_section, machine  # noqa: E402
from bench.robustness import CANDIDATES  # noqa: E402

TIMED_METHODS = ("vkd", "ga", "gd", "kl", "npo", "idk")
SECTION = "Unlearning cost per method, as configured"


def runs_of(cfg, candidates) -> list[tuple[str, object]]:
    """(name, config) per measured run: each method of TIMED_METHODS, and VKD with each candidate's overrides."""
    from vkd_jax.reproduce import apply_overrides

    out = [(m, apply_overrides(cfg, {"method": m})) for m in TIMED_METHODS]
    out += [(f"vkd-{c}", apply_overrides(cfg, {"method": "vkd", **CANDIDATES[c]})) for c in candidates]
    return out


def row_batch(c, rows: int, length: int, seed: int, answer: int = 8) -> dict:
    """`rows` rows of `length` tokens: 2 text tokens, the image tokens, text, the last `answer` the answer. Text
    tokens avoid the special ids and the image token (the tiny tokenizer's image token sits among the low ids)."""
    rng = np.random.default_rng(seed)
    lo = max(4, c.image_token_index + 1) if c.image_token_index < 8 else 4
    hi = c.text.vocab_size if c.image_token_index < 8 else min(c.text.vocab_size, c.image_token_index)
    text = rng.integers(lo, hi, size=(rows, length - c.image_seq_length))
    ids = np.concatenate([text[:, :2], np.full((rows, c.image_seq_length), c.image_token_index), text[:, 2:]], 1)
    lm = np.zeros(ids.shape, np.float32)
    lm[:, -answer:] = 1
    return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
            "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(rows, bool),
            "pixel_values": rng.standard_normal((rows, 3, c.vision.image_size, c.vision.image_size)
                                                ).astype(np.float32)}


def stream_batches(model_config, method, rows: int, length: int) -> dict:
    """One synthetic batch per stream the method reads (different tokens and pixels per stream)."""
    return {s: row_batch(model_config, rows, length, seed=i) for i, s in enumerate(method.streams)}


def timed(cfg, model_config, params, rows, length):
    """(row, step callable) of the config's unlearn step on the given model."""
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.train import Trainer

    method, pcfg, ocfg, axis_rules = stages.stage_training(cfg, "unlearn", model_config)
    steps = int(cfg.stages.unlearn.num_steps)
    tr = Trainer(model_config, params, method, partition_cfg=pcfg, optim_cfg=ocfg, num_steps=max(steps, 10),
                 axis_rules=axis_rules, reference=params if method.needs_reference else None)
    batch = stream_batches(model_config, method, rows, length)
    t0 = time.perf_counter()
    tr.step(batch)["loss"].block_until_ready()
    row = dict(streams=list(method.streams), steps=steps, compile=time.perf_counter() - t0,
               trainable=sum(int(np.prod(v.shape)) for v in tr.state.trainable.values()), times=[])
    return row, lambda: tr.step(batch)["loss"].block_until_ready()


def projected_flops(cfg, rows: int, length: int) -> float:
    """Matmul FLOPs of one unlearn step of `cfg` (its own model, abstract shapes)."""
    import jax

    from vkd_jax.flops import dot_flops
    from vkd_jax.run_models import build_model_config
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.step import build_step
    from vkd_jax.unlearn.train import prepare_batch

    mc = build_model_config(cfg)
    method, pcfg, ocfg, axis_rules = stages.stage_training(cfg, "unlearn", mc)
    built = build_step(mc, method, partition_cfg=pcfg, optim_cfg=ocfg, num_steps=10,
                       mesh=pt.make_mesh(None, jax.devices()[:1]), axis_rules=axis_rules)
    b = {s: prepare_batch(v, method, s) for s, v in stream_batches(mc, method, rows, length).items()}
    return dot_flops(jax.make_jaxpr(built.step)(built.abstract_state, b, built.abstract_frozen,
                                                built.abstract_aux).jaxpr)


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "tiny.py"), "the timed config")
    config_flags.DEFINE_config_file("projection", os.path.join(ROOT, "configs", "llava7b.py"),
                                    "the config whose model the FLOP projection uses")
    flags.DEFINE_string("candidates", "distill-100-400", "comma-separated bench/robustness.py candidates")
    flags.DEFINE_integer("length", 72, "tokens per timed row (image tokens included)")
    flags.DEFINE_integer("projection_length", 640, "tokens per projected row (image tokens included)")
    flags.DEFINE_integer("repeats", 5, "timed rounds (after one warm-up round)")
    flags.DEFINE_bool("time", True, "time the config's steps (else the projection only)")
    flags.DEFINE_string("write", None, f"results file to update (section '{SECTION}')")


def main(argv):
    del argv
    a = flags.FLAGS
    from vkd_jax.config_base import config_from_flag

    cfg = config_from_flag(a["config"])
    candidates = [c for c in a.candidates.split(",") if c]
    lines = []
    if a.time:
        from vkd_jax.models.hf_io import flat_params, load_hf
        from vkd_jax.shipped import SHIPPED_DIR

        model = load_hf(os.path.join(SHIPPED_DIR, f"mllmu_seed{int(cfg.seed)}"))
        params = flat_params(model)
        rows = int(cfg.data.batch_size)
        measured = [(name, *timed(c, model.config, params, rows, a.length)) for name, c in runs_of(cfg, candidates)]
        for i in range(a.repeats + 1):  # interleaved, round 0 warms up
            for _, r, fn in measured:
                t0 = time.perf_counter()
                fn()
                if i:
                    r["times"].append(time.perf_counter() - t0)
        base = {m: next(r for n, r, _ in measured if n == m) for m in ("ga", "gd")}
        lines += [f"`python bench/unlearn_cost.py --write bench/RESULTS.md` on {machine()}: the config's unlearn step "
                  f"per method (configs/tiny.py, the shipped seed-{int(cfg.seed)} vanilla model), {rows} rows per "
                  f"stream of {a.length} tokens; {a.repeats} interleaved rounds after a warm-up; medians; ratios are "
                  "medians of per-round ratios. Per run: the step time x the config's unlearning steps.", "",
                  "| run | streams | trainable params | step (ms) | steps | per run (s) | step / GA's | step / GD's "
                  "| run / GA's | run / GD's |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r, _ in measured:
            step = statistics.median(r["times"])
            ratio = {m: statistics.median(x / y for x, y in zip(r["times"], b["times"])) for m, b in base.items()}
            lines.append(f"| {name} | {', '.join(r['streams'])} | {r['trainable']:,} | {1e3 * step:.1f} | "
                         f"{r['steps']} | {step * r['steps']:.1f} | {ratio['ga']:.2f} | {ratio['gd']:.2f} | "
                         f"{ratio['ga'] * r['steps'] / base['ga']['steps']:.2f} | "
                         f"{ratio['gd'] * r['steps'] / base['gd']['steps']:.2f} |")
    pcfg = config_from_flag(a["projection"])
    rows = int(pcfg.data.batch_size)
    flops = [(name, projected_flops(c, rows, a.projection_length), int(c.stages.unlearn.num_steps))
             for name, c in runs_of(pcfg, candidates)]
    ga_f, gd_f = (next((f, s) for n, f, s in flops if n == m) for m in ("ga", "gd"))
    lines += ["", f"Projected (the model of --projection, {rows} rows per stream of {a.projection_length} tokens, "
                  "matmul FLOPs of the jaxpr from abstract shapes; the projection config's own method sections and "
                  "steps):", "",
              "| run | step TFLOP | steps | run PFLOP | step / GA's | step / GD's | run / GA's | run / GD's |",
              "|---|---|---|---|---|---|---|---|"]
    for name, f, s in flops:
        lines.append(f"| {name} | {f / 1e12:.2f} | {s} | {f * s / 1e15:.2f} | {f / ga_f[0]:.2f} | {f / gd_f[0]:.2f} | "
                     f"{f * s / (ga_f[0] * ga_f[1]):.2f} | {f * s / (gd_f[0] * gd_f[1]):.2f} |")
    text = "\n".join(lines)
    print(text)
    if a.write:
        append_section(a.write, SECTION, text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
