"""LLaVA-1.5-7B-shaped VKD unlearning train step and 7B prefill on one GPU, random weights (bench/RESULTS.md "GPU").

On the device (needs jax[cuda], flax, optax, orbax-checkpoint; ml_collections comes as a wheel in .whl/, which git
ignores, so the device tool must carry ".whl"):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:. python3 bench/gpu_7b.py --config configs/llava7b.py --out $OUT/gpu_7b.json
CPU smoke test: python bench/gpu_7b.py --config configs/tiny.py --batch 4 --steps 2 --out /tmp/g.json
                (or --config configs/llava7b.py --layers 1,1 --batch 2 --steps 1 --skip_forward: a 7B-width proxy)

Per variant (--variants NAME[:BATCH],...: vkd_jax/plan.py VARIANTS; default vkd_remat at --batch, vkd at 8),
`plan.planned_step` builds the train step with the engine's `build_step` (as the Trainer does) on a 1x1x1 mesh of
this device; the plan row and the timing use the same compiled step. Params are made on the device by one jitted
function (normal x 0.02, norm scales 1, biases 0; frozen ones in the partition's frozen dtype, the teacher a copy
of the trainable ones); the state is the built step's init. --warmup 2 + --steps timed steps, each blocked
on. Reported: median step s, tokens/s (rows x seq len, all streams), matmul FLOPs (vkd_jax.flops.dot_flops on the
step's jaxpr: remat recompute included) / s, MFU against --peak_flops (989e12, H100/H200 dense bf16: an
assumption), XLA's memory analysis (peak = argument + output - alias + temp) beside the plan's analytic peak_est,
and the device's bytes_in_use / peak_bytes_in_use (process-wide: a later row's peak includes the earlier rows').
Forward: the whole model in bf16, --forward_batch x (1 + 576 + text_len) tokens, logits at the last slot only.
Each measurement is wrapped: an error (e.g. OOM) is recorded as a string and the rest still runs; the JSON is
rewritten after each one.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import traceback
import zlib

from absl import app, flags
from ml_collections import config_flags

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # before jax starts: plan est. of 7B vkd b8 115 GiB
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 1 << 30


def materialize(abstract: dict, shardings: dict, seed: int = 0) -> dict:
    """Random arrays made on the device by one jitted function; a leaf's values depend on its name and seed only."""
    import jax
    import jax.numpy as jnp

    def leaf(k, s, key):
        if k.endswith("/bias"):
            return jnp.zeros(s.shape, s.dtype)
        if "norm" in k and k.endswith("/weight"):
            return jnp.ones(s.shape, s.dtype)
        return (0.02 * jax.random.normal(key, s.shape, jnp.float32)).astype(s.dtype)

    def make(key):
        return {k: leaf(k, s, jax.random.fold_in(key, zlib.crc32(k.encode()) & 0x7FFFFFFF))
                for k, s in abstract.items()}
    return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))


def timed(fn, warmup: int, steps: int) -> list[float]:
    [fn() for _ in range(warmup)]
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def mem_stats() -> dict:
    import jax
    s = jax.devices()[0].memory_stats() or {}
    return {k: s.get(k) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


def measure_step(cfg, mc, variant: str, batch: int, args, platform, dev) -> dict:
    import jax
    import numpy as np

    from vkd_jax import plan

    ps = plan.planned_step(cfg, mc, platform, batch, variant, args.text_len, [dev])  # the engine's built step
    t0 = time.perf_counter()
    compiled = ps.lower().compile()
    row = plan.plan_row(ps, platform, batch, variant, compiled, time.perf_counter() - t0)
    built = ps.built
    out = {"variant": variant, "batch": batch, "plan_row": row}
    b = jax.device_put(ps.host_batch, built.batch_shardings(ps.host_batch))
    frozen = materialize(built.abstract_frozen, built.frozen_shardings)
    aux = {name: materialize(tree, built.aux_shardings[name]) for name, tree in built.abstract_aux.items()}
    trainable = materialize(built.abstract_state.trainable, built.trainable_shardings)  # teacher: same values
    state = built.init(trainable, jax.random.PRNGKey(0))
    del trainable
    out["mem_after_init"] = mem_stats()
    box = [state, None]

    def one():
        box[0], box[1] = compiled(box[0], b, frozen, aux)
        jax.block_until_ready(box)
    times = timed(one, args.warmup, args.steps)
    m = {k: float(v) for k, v in box[1].items()}
    tokens = sum(int(np.prod(s["input_ids"].shape)) for s in ps.host_batch.values())
    med = statistics.median(times)
    out.update(step_s=med, step_times=times, tokens_per_step=tokens, tokens_per_s=tokens / med,
               loss=m.get("loss"), skipped=m.get("skipped"), compile_s=row["compile_s"],
               mem_after_run=mem_stats(), xla_flops=_xla_flops(compiled),
               **flop_rates(built.step, (built.abstract_state, ps.batch, built.abstract_frozen, built.abstract_aux),
                            med, args.peak_flops))
    for x in jax.tree.leaves((box, b, frozen, aux)):
        x.delete()
    return out


def flop_rates(fn, args, seconds: float, peak: float) -> dict:
    """bench/step.py's matmul FLOPs of fn's jaxpr, per second and over the assumed peak (errors recorded)."""
    import jax

    from vkd_jax.flops import dot_flops
    try:
        f = dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)
        return {"matmul_flops": f, "flops_per_s": f / seconds, "mfu": f / seconds / peak}
    except Exception as e:  # noqa: BLE001  (a jaxpr API change must not lose the timing)
        return {"matmul_flops": None, "flops_per_s": 0.0, "mfu": 0.0, "flops_error": _err(e)}


def _xla_flops(compiled):  # XLA's own count (fusions, elementwise too), where this backend/version gives one
    try:
        ca = compiled.cost_analysis()
        return float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])
    except Exception:  # noqa: BLE001
        return None


def measure_forward(mc, batch: int, args, dev) -> dict:
    import jax
    import numpy as np
    from jax.sharding import SingleDeviceSharding

    from vkd_jax import plan
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    fmc = mc.replace(dtype="bfloat16", param_dtype="bfloat16").with_remat("none")
    graphdef, abstract = abstract_model(fmc)
    sh = SingleDeviceSharding(dev)
    params = materialize(abstract, {k: sh for k in abstract})
    h = plan.dummy_batch(fmc, batch, args.text_len)
    inputs = jax.device_put((h["input_ids"], h["pixel_values"], h["attention_mask"], h["positions"]), sh)

    def fwd(params, ids, px, mask, pos):
        model = model_from_flat_params(graphdef, params)
        return model.forward(ids, px, mask, position_ids=pos, last_logits_only=True).logits
    t0 = time.perf_counter()
    f = jax.jit(fwd).lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    times = timed(lambda: f(params, *inputs).block_until_ready(), args.warmup, args.steps)
    med, tokens = statistics.median(times), int(np.prod(h["input_ids"].shape))
    out = {"batch": batch, "seq_len": h["input_ids"].shape[1], "compile_s": round(compile_s, 1), "step_s": med,
           "step_times": times, "tokens_per_s": tokens / med, "mem_after_run": mem_stats(),
           **flop_rates(fwd, (params, *inputs), med, args.peak_flops)}
    for x in jax.tree.leaves((params, inputs)):
        x.delete()
    return out


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:1500]} | {traceback.format_exc(limit=4)[-1500:]}"


def define_flags() -> None:
    """The CLI's flags (defined only when it runs: other benches import this module)."""
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "llava7b.py"),
                                    "ml_collections config file (path[:variant])", lock_config=False)
    flags.DEFINE_string("out", os.path.join(os.environ["OUT"], "gpu_7b.json") if os.environ.get("OUT") else "",
                        "write the results JSON here")
    flags.DEFINE_integer("batch", 32, "global batch of a variant given without :BATCH")
    flags.DEFINE_integer("steps", 10, "timed steps")
    flags.DEFINE_integer("warmup", 2, "untimed steps first")
    flags.DEFINE_string("variants", "vkd_remat,vkd:8", "NAME[:BATCH],... (vkd_jax/plan.py VARIANTS)")
    flags.DEFINE_string("layers", "", "TEXT,VISION: proxy with the config's widths, as vkd_jax/plan.py")
    flags.DEFINE_string("param_dtype", "float32", "master weights (as the memory plan); frozen: bf16")
    flags.DEFINE_integer("text_len", 64, "text tokens per row")
    flags.DEFINE_integer("forward_batch", 8, "batch of the forward measurement")
    flags.DEFINE_bool("skip_forward", False, "skip the forward measurement")
    flags.DEFINE_float("peak_flops", 989e12, "dense bf16 peak for MFU (H100/H200 SXM)")


def main(argv) -> int:
    del argv
    args = flags.FLAGS
    t_start = time.perf_counter()

    import jax

    from vkd_jax import plan
    from vkd_jax.unlearn.stages import model_config_of
    cfg = flags.FLAGS.config
    cfg.param_dtype = args.param_dtype
    if args.layers:
        cfg.model.text_config.num_hidden_layers, cfg.model.vision_config.num_hidden_layers = \
            (int(x) for x in args.layers.split(","))
    mc = model_config_of(cfg)
    dev = jax.devices()[0]
    limit = (dev.memory_stats() or {}).get("bytes_limit")
    platform = plan.Platform(dev.platform, 1, limit / GIB if limit else 139, str(dev.device_kind))
    res = {"device": str(dev.device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
           "config": args["config"].config_filename, "layers": args.layers or "full", "param_dtype": args.param_dtype,
           "compute_dtype": mc.dtype, "peak_flops_assumed": args.peak_flops, "steps": [], "forward": None}
    print(f"{res['device']} ({res['backend']}, jax {res['jax']}); MFU against {args.peak_flops / 1e12:.0f} TFLOP/s "
          f"(assumed dense bf16 peak); {mc.text.num_hidden_layers}+{mc.vision.num_hidden_layers} layers", flush=True)
    for spec in [v for v in args.variants.split(",") if v]:
        name, _, bsz = spec.partition(":")
        bsz = int(bsz or args.batch)
        try:
            r = measure_step(cfg, mc, name, bsz, args, platform, dev)
            b = r["plan_row"]["bytes"]
            print(f"{name} B={bsz}: {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s, "
                  f"{r['flops_per_s'] / 1e12:.1f} TFLOP/s, MFU {100 * r['mfu']:.1f}%, loss {r['loss']:.3f}, "
                  f"compile {r['compile_s']} s | XLA peak {b['peak'] / GIB:.1f} GiB (temp {b['temp'] / GIB:.1f}), "
                  f"plan est {b['peak_est'] / GIB:.1f} GiB, device peak "
                  f"{(r['mem_after_run']['peak_bytes_in_use'] or 0) / GIB:.1f} GiB", flush=True)
        except Exception as e:  # noqa: BLE001  record and go on (OOM on one row must not lose the others)
            r = {"variant": name, "batch": bsz, "error": _err(e)}
            print(f"{name} B={bsz}: ERROR {r['error'][:400]}", flush=True)
        res["steps"].append(r)
        gc.collect()  # an error's frames may still hold device arrays
        save(res, args.out, t_start)
    if not args.skip_forward:
        try:
            f = res["forward"] = measure_forward(mc, args.forward_batch, args, dev)
            print(f"forward bf16 B={f['batch']} x {f['seq_len']}: {f['step_s'] * 1e3:.1f} ms, "
                  f"{f['tokens_per_s']:.0f} tok/s, MFU {100 * f['mfu']:.1f}%, compile {f['compile_s']} s", flush=True)
        except Exception as e:  # noqa: BLE001
            res["forward"] = {"batch": args.forward_batch, "error": _err(e)}
            print(f"forward: ERROR {res['forward']['error'][:400]}", flush=True)
    save(res, args.out, t_start)
    print(f"total {time.perf_counter() - t_start:.0f} s" + (f"; wrote {args.out}" if args.out else ""))
    return 0


def save(res: dict, path: str, t_start: float) -> None:
    """Written after every measurement, so a run cut short by a time limit still leaves its finished rows."""
    if path:
        res["wall_s"] = round(time.perf_counter() - t_start, 1)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(res, fh, indent=1, default=str)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    define_flags()
    app.run(main)
