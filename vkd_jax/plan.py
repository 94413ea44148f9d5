"""Memory plan: per-device bytes of the unlearning train step on a pod or GPU node, without the hardware or weights.

    python -m vkd_jax.plan --config configs/llava7b.py [--out bench/memory_plan.json] \
        [--platforms v4-8,v5e-16,v4-32,gpu1x80,gpu8x80] [--batches 8,32] [--variants vkd,vkd_remat,ga_full] \
        [--text_len 64] [--param_dtype float32] [--layers 2,2]

For every (platform, global batch, variant) the real train step (`train.make_step`: the method's loss, Adam, clip,
NaN guard; the engine's partition, sharding rules and activation pins) is lowered with abstract, sharded inputs on
N fake CPU devices and compiled; nothing the size of the model is ever allocated. Reported per device:
  params_trainable / params_frozen / teacher / opt_state / batch: exact, from each leaf's shard shape;
  argument / output / alias / temp: XLA's compiled memory analysis (temp = activations and temporaries);
  peak = argument + output - alias + temp (donated state is aliased), fits = peak <= HBM
  (--no_compile: exact counts and the estimate only, fits = null; seconds instead of minutes per row at 7B);
  saved_activations: what the loss keeps for its backward pass (the leaves of its jax.vjp closure, the remat
    policy applied, weights and batch excluded), over the batch shards (data x fsdp; tensor sharding not
    counted, so an upper bound where tensor > 1);
  block_working_set: 2 x what one un-rematted decoder/encoder block saves (the block whose backward runs, or is
    recomputed, and its cotangents);
  act_est = saved_activations + block_working_set + trainable gradients; peak_est = exact state + act_est;
    fits_est = peak_est <= HBM.
CPU caveats (measured on 7B-width proxies, README "Pods and clusters"): the CPU compiler removes optimization
barriers before it schedules, so nothing keeps a rematted block's recompute (or an FSDP all-gather) where the
barriers put it: it hoists all of them to the start of the backward pass and remat does not lower `temp`; it
also runs bf16 matmuls in f32 (f32 copies of the gathered weights and of the matmul inputs). `temp` is therefore an
over-estimate, most of all with remat; `act_est` is the analytic column beside it.
--layers T,V plans a proxy with the config's widths and T decoder / V encoder layers (per-layer slopes).

Variants (VKD = the config's unlearn stage: its method and partition preset, LLM frozen):
  vkd                frozen params in bf16, no remat      vkd_f32frozen  frozen params kept in param_dtype
  vkd_remat          bf16 frozen, remat "full" per block   ga_full        full-model GA (every param trains)
  ga_full_remat      full-model GA with remat
A batch of B means B forget rows (+ B retain rows for methods that read a retain stream), each
image_seq_length image tokens + text_len text tokens. Mesh: fsdp = gcd(chips, B), tensor = chips / fsdp.

JSON: {"config", "model": {...}, "seq_len", "param_dtype", "compute_dtype", "rows": [{"platform", "chips",
"hbm_bytes", "mesh": {data, fsdp, tensor}, "batch", "variant", "method", "preset", "remat", "frozen_dtype",
"bytes": {params_trainable, params_frozen, teacher, opt_state, batch, saved_activations, block_working_set,
act_est, peak_est, argument, output, alias, temp, peak}, "fits", "fits_est", "compile_s"}, ...]}.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Platform:
    name: str
    chips: int
    hbm_gib: float
    what: str


PLATFORMS = {p.name: p for p in (
    Platform("v4-8", 4, 32, "TPU v4-8: 4 chips x 32 GiB HBM"),
    Platform("v5e-16", 16, 16, "TPU v5e-16: 16 chips x 16 GiB HBM"),
    Platform("v4-32", 16, 32, "TPU v4-32: 16 chips x 32 GiB HBM"),
    Platform("gpu1x80", 1, 80, "one 80 GB GPU (A100/H100)"),
    Platform("gpu8x80", 8, 80, "eight 80 GB GPUs (one node)"),
)}

VARIANTS = {  # name -> (stage kind, remat, frozen params in bf16)
    "vkd": ("unlearn", "none", True),
    "vkd_remat": ("unlearn", "full", True),
    "vkd_f32frozen": ("unlearn", "none", False),
    "ga_full": ("ga_full", "none", True),
    "ga_full_remat": ("ga_full", "full", True),
}


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("plan_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--config {path}: not a python config file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _nbytes(sds, sharding) -> int:
    import numpy as np
    return int(np.prod(sharding.shard_shape(tuple(sds.shape)), dtype=np.int64)) * np.dtype(sds.dtype).itemsize


def tree_bytes(tree, shardings) -> int:
    import jax
    return int(sum(jax.tree.leaves(jax.tree.map(_nbytes, tree, shardings))))


def dummy_batch(model_config, batch: int, text_len: int, image: bool = True) -> dict:
    """A host batch of the training shapes (the engine's prepare_batch then adds whatever its method needs)."""
    import numpy as np
    n_img = model_config.image_seq_length if image else 0
    t = 1 + n_img + text_len
    ids = np.full((batch, t), 5, np.int32)
    ids[:, 0] = model_config.text.bos_token_id or 1
    ids[:, 1:1 + n_img] = model_config.image_token_index
    lm = np.zeros((batch, t), np.float32)
    lm[:, t - min(16, text_len):] = 1  # a short answer at the end
    out = {"input_ids": ids, "attention_mask": np.ones((batch, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (batch, t)).copy(),
           "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(batch, bool),
           "has_image": np.full(batch, image)}
    if image:
        v = model_config.vision
        out["pixel_values"] = np.zeros((batch, v.num_channels, v.image_size, v.image_size), np.float32)
    return out


def saved_bytes(fn, args, exclude: set) -> int:
    """Bytes jax keeps for the backward pass of fn w.r.t. args[0] (the leaves of its vjp closure), less the
    leaves whose (shape, dtype) is in `exclude` (weights and batch fields: they are arguments, not activations)."""
    import jax
    import numpy as np
    res = jax.eval_shape(lambda a0, *rest: jax.vjp(lambda x: fn(x, *rest), a0)[1], *args)
    return int(sum(math.prod(r.shape) * np.dtype(r.dtype).itemsize for r in jax.tree.leaves(res)
                   if (tuple(r.shape), np.dtype(r.dtype)) not in exclude))


def block_bytes(mc, rows: int, text_len: int) -> int:
    """Bytes one un-rematted block saves for its backward on `rows` rows (max of a decoder and an encoder block,
    compute dtype): the working set of the block whose backward runs (and recomputes, with remat)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vkd_jax.models.clip import CLIPEncoderLayer
    from vkd_jax.models.config import to_jnp_dtype
    from vkd_jax.models.llama import LlamaDecoderLayer, rope_tables

    dt, pdt = to_jnp_dtype(mc.dtype), to_jnp_dtype(mc.param_dtype)
    t = 1 + mc.image_seq_length + text_len
    out = []
    for make, shape in ((lambda: LlamaDecoderLayer(mc.text, dtype=dt, param_dtype=pdt, rngs=nnx.Rngs(0)),
                         (rows, t, mc.text.hidden_size)),
                        (lambda: CLIPEncoderLayer(mc.vision, dtype=dt, param_dtype=pdt, rngs=nnx.Rngs(0)),
                         (rows, mc.vision.num_patches + 1, mc.vision.hidden_size))):
        graphdef, state = nnx.split(nnx.eval_shape(make))
        text = shape[2] == mc.text.hidden_size and len(out) == 0

        def fn(x, st, text=text, graphdef=graphdef):
            layer = nnx.merge(graphdef, st)
            if not text:
                return layer(x)
            pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
            cos, sin = rope_tables(mc.text, pos, dt)
            return layer(x, cos, sin, jnp.tril(jnp.ones((x.shape[1],) * 2, bool))[None, None])[0]
        weights = {(tuple(v.shape), np.dtype(v.dtype)) for v in jax.tree.leaves(state)}
        out.append(saved_bytes(fn, (jax.ShapeDtypeStruct(shape, dt), state), weights))
    return max(out)


def plan_one(cfg, model_config, platform: Platform, batch: int, variant: str, text_len: int, devices,
             compile: bool = True) -> dict:
    """Lower and compile one train step abstractly; per-device byte counts (exact counts only, no XLA analysis,
    when compile=False)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from vkd_jax.models.hf_io import abstract_model
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import Ctx, make_method
    from vkd_jax.unlearn.train import make_optimizer, make_step, prepare_batch

    kind, remat, bf16_frozen = VARIANTS[variant]
    if kind == "unlearn":
        scfg = cfg.stages.unlearn
        method_name, preset = scfg.method, scfg.partition
    else:
        scfg, method_name, preset = cfg.stages.unlearn, "ga", "full"
    mc = model_config.with_remat(remat) if remat != "none" else model_config
    method = make_method(method_name, ml_collections.ConfigDict(dict(cfg.get(method_name, {}) or {})))
    pcfg = stages.partition_cfg(cfg, preset, mc)
    pcfg.frozen_dtype = "bfloat16" if bf16_frozen else ""
    ocfg = stages.optim_cfg(cfg, scfg)
    graphdef, abstract = abstract_model(mc)
    part = pt.make_partition(abstract, pcfg)
    ctx = Ctx(graphdef, {pt.path_str(p): p for p in abstract}, part)
    tx, sched = make_optimizer(ocfg, 100, None)

    fsdp = math.gcd(platform.chips, batch)
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=fsdp, tensor=platform.chips // fsdp)),
                        devices[:platform.chips])
    axis_rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.mesh.axis_rules)
    t_keys, f_keys = sorted(part.trainable_keys), sorted(part.frozen_keys)
    fdt = part.frozen_dtype
    trainable = {k: part.shapes[k] for k in t_keys}
    frozen = {k: jax.ShapeDtypeStruct(part.shapes[k].shape, fdt or part.shapes[k].dtype) for k in f_keys}
    sh_train = pt.param_shardings(part, t_keys, mesh, axis_rules)
    sh_frozen = pt.param_shardings(part, f_keys, mesh, axis_rules)
    aux, sh_aux = {}, {}
    if method.needs_teacher:
        base = [k for k in t_keys if k in part.rules]
        aux["teacher"] = {k: part.shapes[k] for k in base}
        sh_aux["teacher"] = {k: sh_train[k] for k in base}
    if method.needs_reference:
        raise ValueError(f"variant {variant!r}: method {method_name!r} needs a reference model; not planned")
    rep = NamedSharding(mesh, P())
    init = lambda tr, key: {"step": jnp.zeros((), jnp.int32), "trainable": tr,  # noqa: E731
                            "opt_state": tx.init(tr), "rng": key, "skipped": jnp.zeros((), jnp.int32)}
    state = jax.eval_shape(init, trainable, jax.random.PRNGKey(0))
    sh_state = {"step": rep, "rng": rep, "skipped": rep, "trainable": sh_train,
                "opt_state": pt.tree_shardings_like(state["opt_state"], sh_train, part.shapes, mesh)}
    host = {s: prepare_batch(dummy_batch(mc, batch, text_len), method, s) for s in method.streams}
    batch_abs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
    sh_batch = jax.tree.map(lambda x: pt.batch_sharding(mesh, x.ndim, axis_rules), batch_abs)
    step = make_step(ctx, method, tx, sched, int(ocfg.get("grad_accum", 1)), pt.activation_shardings(mesh, axis_rules))
    t0 = time.perf_counter()
    ma = None
    if compile:
        compiled = jax.jit(step, in_shardings=(sh_state, sh_batch, sh_frozen, sh_aux),
                           out_shardings=(sh_state, rep), donate_argnums=(0,)).lower(state, batch_abs, frozen,
                                                                                    aux).compile()
        ma = compiled.memory_analysis()
    compile_s = time.perf_counter() - t0
    # Analytic activations per device (beside XLA's temp; see the module docstring): what the loss saves for
    # its backward (the remat policy applied) over the batch shards, one block's working set, the gradients.
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    exclude = {(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves((trainable, frozen, aux, batch_abs))}
    saved = saved_bytes(lambda tr, fr, ax, b: method.loss(ctx, tr, fr, ax, b, jax.random.PRNGKey(0), 0)[0],
                        (trainable, frozen, aux, batch_abs), exclude)
    work = block_bytes(mc, -(-batch // shards), text_len)
    b = {"params_trainable": tree_bytes(trainable, sh_train), "params_frozen": tree_bytes(frozen, sh_frozen),
         "teacher": tree_bytes(aux, sh_aux) if aux else 0,
         "opt_state": tree_bytes(state["opt_state"], sh_state["opt_state"]),
         "batch": tree_bytes(batch_abs, sh_batch)}
    b["saved_activations"] = -(-saved // shards)
    b["block_working_set"] = 2 * work  # the recomputed block's residuals and their cotangents
    b["act_est"] = b["saved_activations"] + b["block_working_set"] + b["params_trainable"]  # + gradients
    b["peak_est"] = sum(b[k] for k in ("params_trainable", "params_frozen", "teacher", "opt_state", "batch",
                                       "act_est"))
    if ma is not None:
        b.update(argument=int(ma.argument_size_in_bytes), output=int(ma.output_size_in_bytes),
                 alias=int(ma.alias_size_in_bytes), temp=int(ma.temp_size_in_bytes))
        b["peak"] = b["argument"] + b["output"] - b["alias"] + b["temp"]
    hbm = int(platform.hbm_gib * GIB)
    return {"platform": platform.name, "chips": platform.chips, "hbm_bytes": hbm, "mesh": dict(mesh.shape),
            "batch": batch, "variant": variant, "method": method_name, "preset": preset, "remat": remat,
            "frozen_dtype": str(fdt.name) if fdt is not None else mc.param_dtype, "bytes": b,
            "fits": bool(b["peak"] <= hbm) if "peak" in b else None, "fits_est": bool(b["peak_est"] <= hbm),
            "compile_s": round(compile_s, 1)}


def run_plan(cfg, platforms, batches, variants, *, text_len: int = 64, param_dtype: str | None = None,
             devices=None, log=print, compile: bool = True, layers: tuple[int, int] | None = None) -> dict:
    """layers=(text, vision): a proxy of the config's widths with that many decoder/encoder layers (per-layer
    slopes in minutes instead of hours)."""
    import jax

    from vkd_jax.unlearn.stages import model_config_of
    if param_dtype or layers:
        cfg = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
        cfg.unlock() if hasattr(cfg, "unlock") else None
    if param_dtype:
        cfg.param_dtype = param_dtype
    if layers:
        cfg.model.text_config.num_hidden_layers, cfg.model.vision_config.num_hidden_layers = layers
    mc = model_config_of(cfg)
    devices = list(devices if devices is not None else jax.devices())
    rows = []
    for p in platforms:
        if p.chips > len(devices):
            raise ValueError(f"platform {p.name} needs {p.chips} devices; {len(devices)} available (set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count before jax starts)")
        for bsz in batches:
            for v in variants:
                r = plan_one(cfg, mc, p, bsz, v, text_len, devices, compile)
                rows.append(r)
                log(format_row(r))
    return {"model": {"vision_layers": mc.vision.num_hidden_layers, "text_layers": mc.text.num_hidden_layers,
                      "hidden": mc.text.hidden_size, "vocab": mc.text.vocab_size,
                      "params": int(sum(math.prod(s.shape) for s in _abstract(mc).values()))},
            "seq_len": 1 + mc.image_seq_length + text_len, "param_dtype": mc.param_dtype, "compute_dtype": mc.dtype,
            "rows": rows}


def _abstract(mc):
    from vkd_jax.models.hf_io import abstract_model
    return abstract_model(mc)[1]


def format_row(r: dict) -> str:
    b = r["bytes"]
    g = lambda k: f"{b.get(k, 0) / GIB:7.2f}"  # noqa: E731
    return (f"{r['platform']:8s} B={r['batch']:<3d} {r['variant']:14s} mesh={r['mesh']} params "
            f"{g('params_trainable')}+{g('params_frozen')}+{g('teacher')} opt {g('opt_state')} temp {g('temp')} "
            f"peak {g('peak')} (est. act {g('act_est')} peak {g('peak_est')}) / {r['hbm_bytes'] / GIB:.0f} GiB "
            f"{ {True: 'fits', False: 'DOES NOT FIT', None: '(not compiled)'}[r['fits']]} "
            f"({r['compile_s']} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--platforms", default=",".join(PLATFORMS))
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--variants", default="vkd,vkd_remat,vkd_f32frozen,ga_full,ga_full_remat")
    ap.add_argument("--text_len", type=int, default=64)
    ap.add_argument("--param_dtype", default="float32", help="storage dtype of the params (master weights)")
    ap.add_argument("--no_compile", action="store_true", help="exact param/optimizer/batch bytes only (fast)")
    ap.add_argument("--layers", default="", help="TEXT,VISION: a proxy with the config's widths and these layer "
                    "counts")
    args = ap.parse_args(argv)
    try:
        platforms = [PLATFORMS[n] for n in args.platforms.split(",") if n]
    except KeyError as e:
        ap.error(f"unknown platform {e}; known: {sorted(PLATFORMS)}")
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; known: {sorted(VARIANTS)}")
    need = max(p.chips for p in platforms)
    # before the CPU backend starts: enough fake devices for the largest mesh (a larger count already set stays)
    flags = os.environ.get("XLA_FLAGS", "").split()
    have = [int(f.split("=")[1]) for f in flags if "host_platform_device_count=" in f]
    if not have or have[-1] < need:
        flags = [f for f in flags if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={need}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cfg = load_config(args.config)
    out = run_plan(cfg, platforms, [int(b) for b in args.batches.split(",")], variants, text_len=args.text_len,
                   param_dtype=args.param_dtype, compile=not args.no_compile,
                   layers=tuple(int(x) for x in args.layers.split(",")) if args.layers else None)
    out["config"] = args.config
    if args.out:
        from vkd_jax.io_utils import atomic_write_text
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
