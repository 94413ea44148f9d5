"""The pipeline plan's estimates (vkd_jax.plan_pipeline) against what can be measured without a large accelerator.

  python bench/pipeline_plan_check.py --skip_memory --out bench/pipeline_plan_check.json   # alone: it times
  python bench/pipeline_plan_check.py --memory_only --out bench/pipeline_plan_memory_check.json

1. Memory at 7B widths: configs/llava7b.py with 2 decoder and 2 encoder layers; each training stage's train step
   (vanilla, unlearn for VKD and for NPO, relearn) compiled for one device by XLA on this CPU: its peak (argument +
   output - alias + temp) beside the plan's peak_est (exact state + analytic activations).
2. Time on this CPU, the tiny config: the unlearn stage's train step (the Trainer's, random weights) and one
   evaluation batch's greedy decoding, timed (medians); beside them the plan's formula with this machine's
   measured matmul peak (fp32) and copy bandwidth in place of an accelerator's: the step at the plan's MFU and
   the MFU this CPU reaches; decoding at BW_EFF of the bandwidth (+ prefill at MFU).
3. GPU: bench/gpu_7b_h200.json's measured LLaVA-1.5-7B VKD step on one H200 (an earlier session) against the
   plan's time formula for the same step (its matmul FLOPs over 989 TFLOP/s at the plan's MFU).
Run it alone on the machine (it times things). Results: bench/RESULTS.md, "Pipeline plan".
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def memory_rows(layers=(2, 2)) -> list[dict]:
    import jax

    from vkd_jax import plan_pipeline as pp
    from vkd_jax.config_base import load_config
    from vkd_jax.plan import GIB, PLATFORMS, plan_row
    from vkd_jax.reproduce import apply_overrides
    from vkd_jax.run_models import build_model_config

    out = []
    for method, stage in (("vkd", "vanilla"), ("vkd", "unlearn"), ("npo", "unlearn"), ("vkd", "relearn")):
        cfg = apply_overrides(load_config(os.path.join(ROOT, "configs", f"llava7b.py:method={method}")),
                              {"model.text_config.num_hidden_layers": layers[0],
                               "model.vision_config.num_hidden_layers": layers[1]})
        mc = build_model_config(cfg)
        p = PLATFORMS["gpu1x80"]
        ps = pp.stage_step(cfg, mc, stage, pp.mesh_of(cfg, p, jax.devices()), 128)
        t = time.perf_counter()
        compiled = ps.lower().compile()
        r = plan_row(ps, p, int(cfg.data.batch_size), stage, compiled, time.perf_counter() - t)
        b = r["bytes"]
        out.append({"method": method, "stage": stage, "partition": ps.preset, "remat": ps.remat,
                    "plan_peak_gib": b["peak_est"] / GIB, "xla_peak_gib": b["peak"] / GIB,
                    "xla_temp_gib": b["temp"] / GIB, "plan_act_gib": b["act_est"] / GIB,
                    "ratio_plan_over_xla": b["peak_est"] / b["peak"]})
        print(out[-1], flush=True)
    return out


def cpu_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    import numpy as np
    a = np.ones(n_bytes // 4, np.float32)
    b = np.empty_like(a)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t)
    return 2 * a.nbytes / statistics.median(times)  # read + write


def cpu_rows(repeats: int = 7) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from bench.common import matmul_peak_flops, median_time
    from vkd_jax import plan_costs as pc
    from vkd_jax import plan_pipeline as pp
    from vkd_jax.config_base import load_config
    from vkd_jax.eval.decode import greedy_decode
    from vkd_jax.models.hf_io import flat_params
    from vkd_jax.models.llava import Llava
    from vkd_jax.plan import Platform, dummy_batch
    from vkd_jax.run_models import build_model_config
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.train import Trainer

    cfg = load_config(os.path.join(ROOT, "configs", "tiny.py:splits=1"))
    text_len = 40  # the tiny rows' length bucket (56 tokens with the 16 image tokens)
    mc = build_model_config(cfg)
    dev = jax.devices()[:1]
    peak = matmul_peak_flops()["xla"]
    bw = cpu_bandwidth()
    cpu = Platform("cpu", 1, 0.0, "this CPU", peak / 1e12, bw / 1e9)
    ps = pp.stage_step(cfg, mc, "unlearn", pp.mesh_of(cfg, cpu, dev), text_len)
    flops = pc.step_flops(ps)
    model = Llava(mc, rngs=nnx.Rngs(0))
    params = flat_params(model)
    method = make_method(cfg.method, ml_collections.ConfigDict(dict(cfg.vkd)))
    tr = Trainer(mc, params, method, partition_cfg=stages.partition_cfg(cfg, stages.stage_partition(cfg, "unlearn"),
                                                                      mc),
                 optim_cfg=stages.optim_cfg(cfg, cfg.stages.unlearn), num_steps=1000,
                 mesh=pp.mesh_of(cfg, cpu, dev))
    batch = {s: dummy_batch(mc, int(cfg.data.batch_size), text_len) for s in method.streams}
    step_s = median_time(lambda: tr.step(batch)["loss"].block_until_ready(), repeats)
    # decoding: one evaluation batch, every row running all max_new_tokens (an EOS id never produced)
    b, new = int(cfg.eval.batch_size), int(cfg.eval.max_new_tokens)
    prompt = dummy_batch(mc, b, text_len)
    split = nnx.split(model)
    dec = lambda: greedy_decode(model, prompt["input_ids"], prompt["attention_mask"],  # noqa: E731
                                jnp.asarray(prompt["pixel_values"]), max_new_tokens=new,
                                eos_id=mc.text.vocab_size + 7, pad_id=0, split=split)
    decode_s = median_time(dec, repeats)
    sizes = pc.model_sizes(mc)
    seq = 1 + mc.image_seq_length + text_len
    kv = pc.eval_bytes(mc, sizes, cfg, seq)["kv_cache"]
    decode_formula = pc.eval_seconds(sizes, kv, b, cfg, seq, cpu)
    return {"cpu_matmul_peak_flops": peak, "cpu_copy_bandwidth_bytes": bw, "step_flops": flops,
            "step_s_measured": step_s, "step_s_formula_at_mfu": flops / (peak * pc.MFU),
            "cpu_mfu_measured": flops / step_s / peak, "decode_batch": b, "max_new_tokens": new,
            "decode_s_measured": decode_s, "decode_s_formula": decode_formula,
            "ratio_step_measured_over_formula": step_s / (flops / (peak * pc.MFU)),
            "ratio_decode_measured_over_formula": decode_s / decode_formula, "params": sizes["count"],
            "seq_len": seq, "streams": list(method.streams), "batch_per_stream": int(cfg.data.batch_size)}


def gpu_row() -> dict | None:
    from vkd_jax import plan_costs as pc
    path = os.path.join(ROOT, "bench", "gpu_7b_h200.json")
    if not os.path.exists(path):
        return None
    d = json.load(open(path))
    s = d["steps"][0]
    formula = s["matmul_flops"] / (d["peak_flops_assumed"] * pc.MFU)
    return {"device": d["device"], "variant": s["variant"], "batch": s["batch"], "step_s_measured": s["step_s"],
            "matmul_flops": s["matmul_flops"], "step_s_formula_at_mfu": formula,
            "mfu_measured": s["mfu"], "ratio_measured_over_formula": s["step_s"] / formula,
            "plan_peak_est_gib": s["plan_row"]["bytes"]["peak_est"] / 2 ** 30,
            "measured_peak_gib": s["mem_after_run"]["peak_bytes_in_use"] / 2 ** 30}


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--skip_memory", action="store_true", help="only parts 2 and 3 (the timed ones)")
    ap.add_argument("--memory_only", action="store_true", help="only part 1 (compiles; nothing timed)")
    a = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    t = time.time()
    out = {}
    if not a.memory_only:
        out.update(gpu=gpu_row(), cpu=cpu_rows())
        print(json.dumps(out["cpu"], indent=1), flush=True)
    if not a.skip_memory:
        out["memory_7b_widths"] = memory_rows()
    out["wall_s"] = time.time() - t
    if a.out:
        from vkd_jax.io_utils import atomic_write_text
        atomic_write_text(a.out, json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
