"""LLaVA-1.5-7B-shaped VKD unlearning train step and 7B prefill on one GPU, random weights (bench/RESULTS.md "GPU").

On the device (needs jax[cuda], flax, optax, orbax-checkpoint; ml_collections comes as a wheel in .whl/, which git
ignores, so the device tool must carry ".whl"):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:. python3 bench/gpu_7b.py --config configs/llava7b.py --out $OUT/gpu_7b.json
CPU smoke test: python bench/gpu_7b.py --config configs/tiny.py --batch 4 --steps 2 --out /tmp/g.json
                (or --config configs/llava7b.py --layers 1,1 --batch 2 --steps 1 --skip_forward: a 7B-width proxy)

Per variant (--variants NAME[:BATCH],...: vkd_jax/plan.py VARIANTS; default vkd_remat at --batch, vkd at 8),
`plan.plan_one` builds and compiles the real train step on a 1x1x1 mesh of this device and the compiled step is
taken from it (jax.jit is wrapped meanwhile): what is timed is what the plan counts. Params are made on the device
by one jitted function (normal x 0.02, norm scales 1, biases 0; frozen ones in the partition's frozen dtype, the
teacher a copy of the trainable ones); the state is plan_one's init. --warmup 2 + --steps timed steps, each blocked
on. Reported: median step s, tokens/s (rows x seq len, all streams), matmul FLOPs (bench/step.py dot_flops on the
step's jaxpr: remat recompute included) / s, MFU against --peak_flops (989e12, H100/H200 dense bf16: an
assumption), XLA's memory analysis (peak = argument + output - alias + temp) beside the plan's analytic peak_est,
and the device's bytes_in_use / peak_bytes_in_use (process-wide: a later row's peak includes the earlier rows').
Forward: the whole model in bf16, --forward_batch x (1 + 576 + text_len) tokens, logits at the last slot only.
Each measurement is wrapped: an error (e.g. OOM) is recorded as a string and the rest still runs; the JSON is
rewritten after each one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
import types
import zlib

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # before jax starts: plan est. of 7B vkd b8 115 GiB
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 1 << 30


class CaptureStep:
    """Wraps jax.jit while plan_one runs; keeps the train step it jits, the jit kwargs, lower()'s args, compiled."""

    def __enter__(self):
        import jax
        self.real = real = jax.jit

        def jit(*a, **k):
            j, fn = real(*a, **k), (a[0] if a else k.get("fun"))
            if getattr(fn, "__qualname__", "") != "make_step.<locals>.step":
                return j
            self.fn, self.kw = fn, k
            return types.SimpleNamespace(lower=lambda *args: self._lower(j, args))
        jax.jit = jit
        return self

    def _lower(self, j, args):
        self.args, low = args, j.lower(*args)
        return types.SimpleNamespace(compile=lambda: setattr(self, "compiled", low.compile()) or self.compiled)

    def __exit__(self, *exc):
        import jax
        jax.jit = self.real


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
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from vkd_jax import plan
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.train import make_optimizer, prepare_batch

    with CaptureStep() as cap:  # plan_one builds, shards and compiles the step on [dev]
        row = plan.plan_one(cfg, mc, platform, batch, variant, args.text_len, [dev], compile=True)
    state_abs, batch_abs, frozen_abs, aux_abs = cap.args
    sh_state, sh_batch, sh_frozen, sh_aux = cap.kw["in_shardings"]
    out = {"variant": variant, "batch": batch, "plan_row": row}
    # concrete inputs of the same shapes: plan_one's method, dummy batch and optimizer
    name = cfg.stages.unlearn.method if plan.VARIANTS[variant][0] == "unlearn" else "ga"
    method = make_method(name, ml_collections.ConfigDict(dict(cfg.get(name, {}) or {})))
    host = {s: prepare_batch(plan.dummy_batch(mc, batch, args.text_len), method, s) for s in method.streams}
    sig = lambda t: jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), t)  # noqa: E731
    if sig(host) != sig(batch_abs):
        raise ValueError("the dummy batch differs from the batch plan_one compiled for")
    tx, _ = make_optimizer(stages.optim_cfg(cfg, cfg.stages.unlearn), 100, None)
    b = jax.device_put(host, sh_batch)
    frozen = materialize(frozen_abs, sh_frozen)
    aux = {"teacher": materialize(aux_abs["teacher"], sh_aux["teacher"])} if aux_abs else {}
    trainable = materialize(state_abs["trainable"], sh_state["trainable"])  # teacher = same names -> same values
    init = lambda tr, key: {"step": jnp.zeros((), jnp.int32), "trainable": tr,  # noqa: E731  plan_one's init
                            "opt_state": tx.init(tr), "rng": key, "skipped": jnp.zeros((), jnp.int32)}
    state = jax.jit(init, out_shardings=sh_state)(trainable, jax.random.PRNGKey(0))
    del trainable
    out["mem_after_init"] = mem_stats()
    box = [state, None]

    def one():
        box[0], box[1] = cap.compiled(box[0], b, frozen, aux)
        jax.block_until_ready(box)
    times = timed(one, args.warmup, args.steps)
    m = {k: float(v) for k, v in box[1].items()}
    tokens = sum(int(np.prod(s["input_ids"].shape)) for s in host.values())
    med = statistics.median(times)
    out.update(step_s=med, step_times=times, tokens_per_step=tokens, tokens_per_s=tokens / med,
               loss=m.get("loss"), skipped=m.get("skipped"), compile_s=row["compile_s"],
               mem_after_run=mem_stats(), xla_flops=_xla_flops(cap.compiled),
               **flop_rates(cap.fn, (state_abs, batch_abs, frozen_abs, aux_abs), med, args.peak_flops))
    for x in jax.tree.leaves((box, b, frozen, aux)):
        x.delete()
    return out


def flop_rates(fn, args, seconds: float, peak: float) -> dict:
    """bench/step.py's matmul FLOPs of fn's jaxpr, per second and over the assumed peak (errors recorded)."""
    import jax

    from bench.step import dot_flops
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
    from vkd_jax.unlearn.partition import path_str

    fmc = mc.replace(dtype="bfloat16", param_dtype="bfloat16").with_remat("none")
    graphdef, abstract = abstract_model(fmc)
    paths = {path_str(p): p for p in abstract}
    sh = SingleDeviceSharding(dev)
    params = materialize({k: abstract[p] for k, p in paths.items()}, {k: sh for k in paths})
    h = plan.dummy_batch(fmc, batch, args.text_len)
    inputs = jax.device_put((h["input_ids"], h["pixel_values"], h["attention_mask"], h["positions"]), sh)

    def fwd(params, ids, px, mask, pos):
        model = model_from_flat_params(graphdef, {paths[k]: v for k, v in params.items()})
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "llava7b.py"))
    ap.add_argument("--out", default=os.path.join(os.environ["OUT"], "gpu_7b.json") if os.environ.get("OUT") else "")
    ap.add_argument("--batch", type=int, default=32, help="global batch of a variant given without :BATCH")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="vkd_remat,vkd:8", help="NAME[:BATCH],... (vkd_jax/plan.py VARIANTS)")
    ap.add_argument("--layers", default="", help="TEXT,VISION: proxy with the config's widths, as vkd_jax/plan.py")
    ap.add_argument("--param_dtype", default="float32", help="master weights (as the memory plan); frozen: bf16")
    ap.add_argument("--text_len", type=int, default=64)
    ap.add_argument("--forward_batch", type=int, default=8)
    ap.add_argument("--skip_forward", action="store_true")
    ap.add_argument("--peak_flops", type=float, default=989e12, help="dense bf16 peak for MFU (H100/H200 SXM)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import jax

    from vkd_jax import plan
    from vkd_jax.unlearn.stages import model_config_of
    cfg = plan.load_config(args.config)
    cfg.unlock()  # the proxy / dtype edits of plan.run_plan
    cfg.param_dtype = args.param_dtype
    if args.layers:
        cfg.model.text_config.num_hidden_layers, cfg.model.vision_config.num_hidden_layers = \
            (int(x) for x in args.layers.split(","))
    mc = model_config_of(cfg)
    dev = jax.devices()[0]
    limit = (dev.memory_stats() or {}).get("bytes_limit")
    platform = plan.Platform(dev.platform, 1, limit / GIB if limit else 139, str(dev.device_kind))
    res = {"device": str(dev.device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
           "config": args.config, "layers": args.layers or "full", "param_dtype": args.param_dtype,
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
    sys.exit(main())
