"""Memory plan: per-device bytes of the unlearning train step on a pod or GPU node, without the hardware or weights.

    python -m vkd_jax.plan --config configs/llava7b.py [--config.x=y ...] [--out bench/memory_plan.json] \
        [--platforms v4-8,v5e-16,v4-32,gpu1x80,gpu8x80] [--batches 8,32] [--variants vkd,vkd_remat,ga_full] \
        [--text_len 64] [--param_dtype float32] [--layers 2,2]

For every (platform, global batch, variant) the train step the Trainer trains with (`unlearn.step.build_step`: the
method's loss, Adam, clip, NaN guard; the engine's partition, sharding rules and activation pins) is lowered with
abstract, sharded inputs on N fake CPU devices and compiled; nothing the size of the model is ever allocated.
Reported per device:
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
CPU caveats (measured on 7B-width proxies, docs/scale.md "Pods and clusters"): the CPU compiler removes optimization
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

import dataclasses
import json
import math
import os
import time

from absl import app, flags
from ml_collections import config_flags

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Platform:
    name: str
    chips: int
    hbm_gib: float
    what: str
    peak_tflops: float   # dense bf16 per chip (vendor figures)
    hbm_gbps: float      # memory bandwidth per chip, GB/s (vendor figures)
    hosts: int = 1       # processes (a multi-process run keeps its models on the devices between stages)


PLATFORMS = {p.name: p for p in (
    Platform("v4-8", 4, 32, "TPU v4-8: 4 chips x 32 GiB HBM", 275, 1228),
    Platform("v5e-16", 16, 16, "TPU v5e-16: 16 chips x 16 GiB HBM, 4 hosts", 197, 819, 4),
    Platform("v5p-8", 4, 95, "TPU v5p-8: 4 chips x 95 GiB HBM", 459, 2765),
    Platform("v4-32", 16, 32, "TPU v4-32: 16 chips x 32 GiB HBM, 4 hosts", 275, 1228, 4),
    Platform("gpu1x80", 1, 80, "one 80 GB GPU (H100 SXM figures)", 989, 3350),
    Platform("gpu1x141", 1, 140, "one H200 (141 GB)", 989, 4800),
    Platform("gpu8x80", 8, 80, "eight 80 GB GPUs, one node (H100 SXM figures)", 989, 3350),
)}

VARIANTS = {  # name -> (stage kind, remat, frozen params in bf16)
    "vkd": ("unlearn", "none", True),
    "vkd_remat": ("unlearn", "full", True),
    "vkd_f32frozen": ("unlearn", "none", False),
    "ga_full": ("ga_full", "none", True),
    "ga_full_remat": ("ga_full", "full", True),
}


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


@dataclasses.dataclass
class PlannedStep:
    """One plan row's step before compilation: the engine's built step and the abstract batch it takes."""
    built: object             # vkd_jax.unlearn.step.BuiltStep
    batch: dict               # abstract (ShapeDtypeStruct) batch, per stream
    host_batch: dict          # the dummy numpy batch of those shapes
    model_config: object
    method_name: str
    preset: str
    remat: str
    text_len: int

    def lower(self):
        b = self.built
        return b.jit(self.batch).lower(b.abstract_state, self.batch, b.abstract_frozen, b.abstract_aux)


def planned_step(cfg, model_config, platform: Platform, batch: int, variant: str, text_len: int,
                 devices) -> PlannedStep:
    """The train step of one (platform, batch, variant), built by `build_step` as the Trainer builds it, on a
    mesh of `platform.chips` of `devices` (fsdp = gcd(chips, batch), tensor = the rest)."""
    import jax
    import ml_collections

    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.step import build_step
    from vkd_jax.unlearn.train import prepare_batch

    kind, remat, bf16_frozen = VARIANTS[variant]
    method_name, preset = (cfg.method, stages.stage_partition(cfg, "unlearn")) if kind == "unlearn" else \
        ("ga", "full")
    mc = model_config.with_remat(remat) if remat != "none" else model_config
    method = make_method(method_name, cfg[method_name])
    if method.needs_reference:
        raise ValueError(f"variant {variant!r}: method {method_name!r} needs a reference model; not planned")
    pcfg = stages.partition_cfg(cfg, preset, mc)
    pcfg.frozen_dtype = "bfloat16" if bf16_frozen else ""
    fsdp = math.gcd(platform.chips, batch)
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=fsdp, tensor=platform.chips // fsdp)),
                        devices[:platform.chips])
    axis_rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.mesh.axis_rules)
    built = build_step(mc, method, partition_cfg=pcfg, optim_cfg=stages.optim_cfg(cfg, cfg.stages.unlearn),
                       num_steps=100, mesh=mesh, axis_rules=axis_rules)
    host = {s: prepare_batch(dummy_batch(mc, batch, text_len), method, s) for s in method.streams}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
    return PlannedStep(built, abstract, host, mc, method_name, preset, remat, text_len)


def plan_one(cfg, model_config, platform: Platform, batch: int, variant: str, text_len: int, devices,
             compile: bool = True) -> dict:
    """Lower and compile one train step abstractly; per-device byte counts (exact counts only, no XLA analysis,
    when compile=False)."""
    ps = planned_step(cfg, model_config, platform, batch, variant, text_len, devices)
    t0 = time.perf_counter()
    compiled = ps.lower().compile() if compile else None
    return plan_row(ps, platform, batch, variant, compiled, time.perf_counter() - t0)


def saved_key(ps: PlannedStep, batch: int) -> tuple:
    """plan_row's memo key of a step's (global) saved activations: what they depend on besides the depth."""
    return ("saved", ps.method_name, ps.preset, batch, ps.text_len, tuple(sorted(ps.batch)))


def plan_row(ps: PlannedStep, platform: Platform, batch: int, variant: str, compiled=None,
             compile_s: float = 0.0, memo: dict | None = None, accum: int = 1) -> dict:
    """The plan's row for a planned step (and its compiled form, when there is one). `memo`: a dict that keeps
    the global activation counts of a (method, partition, batch) between platforms (they do not depend on the
    mesh; tracing them at 7B takes seconds). `accum`: gradient accumulation (optim.grad_accum): the activations
    of one microbatch at a time, and a buffer of accumulated gradients."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    b_ = ps.built
    mesh, method, mc = b_.mesh, b_.method, ps.model_config
    trainable, frozen, aux = b_.abstract_state.trainable, b_.abstract_frozen, b_.abstract_aux
    # Analytic activations per device (beside XLA's temp; see the module docstring): what the loss saves for
    # its backward (the remat policy applied) over the batch shards, one block's working set, the gradients.
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    exclude = {(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves((trainable, frozen, aux, ps.batch))}
    memo = {} if memo is None else memo
    key = saved_key(ps, batch)
    if key not in memo:
        memo[key] = saved_bytes(lambda tr, fr, ax, b: method.loss(b_.ctx, tr, fr, ax, b, jax.random.PRNGKey(0),
                                                                  jnp.zeros((), jnp.int32))[0],
                                (trainable, frozen, aux, ps.batch), exclude)
    rows = -(-batch // (shards * accum))
    if ("work", rows, ps.text_len) not in memo:
        memo["work", rows, ps.text_len] = block_bytes(mc, rows, ps.text_len)
    saved, work = memo[key], memo["work", rows, ps.text_len]
    b = {"params_trainable": tree_bytes(trainable, b_.trainable_shardings),
         "params_frozen": tree_bytes(frozen, b_.frozen_shardings),
         "teacher": tree_bytes(aux, b_.aux_shardings) if aux else 0,
         "opt_state": tree_bytes(b_.abstract_state.opt_state, b_.state_shardings.opt_state),
         "batch": tree_bytes(ps.batch, b_.batch_shardings(ps.batch))}
    b["saved_activations"] = -(-saved // (shards * accum))
    b["block_working_set"] = 2 * work  # the recomputed block's residuals and their cotangents
    grads = b["params_trainable"] * (2 if accum > 1 else 1)  # a microbatch's gradients (+ their running sum)
    b["act_est"] = b["saved_activations"] + b["block_working_set"] + grads
    b["peak_est"] = sum(b[k] for k in ("params_trainable", "params_frozen", "teacher", "opt_state", "batch",
                                       "act_est"))
    if compiled is not None:
        ma = compiled.memory_analysis()
        b.update(argument=int(ma.argument_size_in_bytes), output=int(ma.output_size_in_bytes),
                 alias=int(ma.alias_size_in_bytes), temp=int(ma.temp_size_in_bytes))
        b["peak"] = b["argument"] + b["output"] - b["alias"] + b["temp"]
    hbm = int(platform.hbm_gib * GIB)
    fdt = b_.part.frozen_dtype
    return {"platform": platform.name, "chips": platform.chips, "hbm_bytes": hbm, "mesh": dict(mesh.shape),
            "batch": batch, "variant": variant, "method": ps.method_name, "preset": ps.preset, "remat": ps.remat,
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
    check_devices(platforms, devices)
    rows = []
    for p in platforms:
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


def check_devices(platforms, devices) -> None:
    """Every platform's mesh needs that many (fake) devices in this process."""
    for p in platforms:
        if p.chips > len(devices):
            raise ValueError(f"platform {p.name} needs {p.chips} devices; {len(devices)} available (set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count before jax starts)")


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


def define_flags() -> None:
    """The CLI's flags (defined only when it runs: this module is also a library, imported beside other CLIs)."""
    config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:variant])", lock_config=False)
    flags.DEFINE_string("out", "", "write the plan JSON here")
    flags.DEFINE_string("platforms", ",".join(PLATFORMS), "comma-separated platforms")
    flags.DEFINE_string("batches", "8,32", "comma-separated global batches")
    flags.DEFINE_string("variants", "vkd,vkd_remat,vkd_f32frozen,ga_full,ga_full_remat", "comma-separated variants")
    flags.DEFINE_integer("text_len", 64, "text tokens per row (beside the image tokens)")
    flags.DEFINE_string("param_dtype", "float32", "storage dtype of the params (master weights)")
    flags.DEFINE_bool("no_compile", False, "exact param/optimizer/batch bytes only (fast)")
    flags.DEFINE_string("layers", "", "TEXT,VISION: a proxy with the config's widths and these layer counts")
    flags.DEFINE_bool("pipeline", False, "every stage main runs for the config (vkd_jax.plan_pipeline); "
                      "--platforms defaults to its list, --text_len to 128; --batches/--variants are unused")
    flags.mark_flags_as_required(["config"])


def _plan(cfg, a, platforms, variants) -> dict:
    if a.pipeline:
        from vkd_jax.plan_pipeline import plan_pipeline
        if a.layers:
            cfg.model.text_config.num_hidden_layers, cfg.model.vision_config.num_hidden_layers = (
                int(x) for x in a.layers.split(","))
        out = plan_pipeline(cfg, platforms, text_len=a.text_len if a["text_len"].present else 128)
        from vkd_jax.plan_pipeline import markdown
        print(markdown(out))
    else:
        out = run_plan(cfg, platforms, [int(b) for b in a.batches.split(",")], variants,
                       text_len=a.text_len, param_dtype=a.param_dtype, compile=not a.no_compile,
                       layers=tuple(int(x) for x in a.layers.split(",")) if a.layers else None)
    return out


def main(argv) -> int:
    del argv
    a = flags.FLAGS
    if a.pipeline and not a["platforms"].present:
        from vkd_jax.plan_pipeline import PIPELINE_PLATFORMS
        a.platforms = ",".join(PIPELINE_PLATFORMS)
    try:
        platforms = [PLATFORMS[n] for n in a.platforms.split(",") if n]
    except KeyError as e:
        raise app.UsageError(f"unknown platform {e}; known: {sorted(PLATFORMS)}") from None
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise app.UsageError(f"unknown variants {bad}; known: {sorted(VARIANTS)}")
    need = max(p.chips for p in platforms)
    # before the CPU backend starts: enough fake devices for the largest mesh (a larger count already set stays)
    xla = os.environ.get("XLA_FLAGS", "").split()
    have = [int(f.split("=")[1]) for f in xla if "host_platform_device_count=" in f]
    if not have or have[-1] < need:
        xla = [f for f in xla if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(xla + [f"--xla_force_host_platform_device_count={need}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from vkd_jax.cli import user_errors
    from vkd_jax.config_base import config_from_flag
    from vkd_jax.config_check import validate

    with user_errors():  # a bad config: one line naming each bad field, exit 1, before any planning
        cfg = config_from_flag(a["config"])  # a variant field on the command line: the file built again
        validate(cfg, files=False)  # the planner reads no weights and no data
        out = _plan(cfg, a, platforms, variants)
    out["config"] = a["config"].config_filename
    if a.out:
        from vkd_jax.io_utils import atomic_write_text
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        atomic_write_text(a.out, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
