"""The whole pipeline's plan: every stage `vkd_jax.main` would run for a config, on each platform, with its per-device
peak memory, FLOPs, bytes moved and an estimated time (the preflight main runs before any work: vkd_jax.preflight).

    python -m vkd_jax.plan --config configs/llava7b.py --pipeline --out plan7b.json [--platforms v4-8,gpu1x80]

Stages, read from the config as `experiment.run` and `stages.run_stage` read it (their own helpers, not copies):
pretrain (embedded worlds), vanilla, reference (`experiment.uses_reference`), then per forget split masks
(`experiment.uses_masks`), unlearn, eval (the vanilla and the unlearned model), relearn@<p> (one row per fraction;
its attacks and their held-out evaluations counted), probe, and export. A training stage is its real train step
(`unlearn.step.build_step` with the stage's method, streams, partition, optimiser and the config's remat and
dtypes), planned as `vkd_jax.plan` plans one: exact per-device state from each leaf's shard shape, the analytic
activations (what the loss saves for its backward, one block's working set, the gradients), the step's matmul
FLOPs (vkd_jax.flops, global) and one device's memory traffic (`step_bytes_moved`, a lower bound). Evaluation and
the probe run on one device holding the whole model (the evaluator does not shard): the model in its storage dtype,
the KV cache, the prefill's logits. Export writes on the host: no device memory.

Time: training and prefill at `MFU` of the platform's peak bf16 FLOP/s; greedy decoding reads every weight and the
KV cache once per generated token, at `BW_EFF` of the peak memory bandwidth. Evaluation sizes of the downloaded
benchmarks are the `EVAL_PROMPTS` assumption below (the embedded ones: their worlds' sizes).
"""

from __future__ import annotations

import dataclasses
import math

from vkd_jax.plan import GIB, Platform, check_devices

MFU = 0.4      # training and prefill: model FLOP/s utilisation assumed
BW_EFF = 0.6   # decoding: fraction of peak memory bandwidth assumed
DISK_GBPS = 1.0  # export: host disk write bandwidth assumed
# Prompts one full evaluation decodes, per benchmark (downloads): MLLMU-Bench forget 5% (25 people), Test (the same
# people, 4 poses averaged), Retain (475), Real celebrity (153), about 14 questions per profile, each asked with the
# image and as text; CLEAR forget 10% (20 people), retain (180), real faces and real world, name MC and text QA.
EVAL_PROMPTS = {"mllmu": (25 + 25 * 4 + 475 + 153) * 14 * 2, "clear": (20 + 180) * 10 + 300 + 300}
PROBE_IMAGES = {"mllmu": 653 * 4, "clear": 200 * 8}
PIPELINE_PLATFORMS = ("v4-8", "v5e-16", "v5p-8", "gpu1x80", "gpu1x141", "gpu8x80")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str          # row name: vanilla, masks, unlearn, eval, relearn@0.5, ...
    kind: str          # train | masks | eval | probe | export
    stage: str = ""    # the config's stage section (train and masks)
    steps: int = 0     # steps (train), batches (masks)
    repeats: int = 1   # how many times a run does it (forget splits x attacks)
    eval_prompts: int = 0  # prompts it evaluates besides (relearning's held-out questions)


def pipeline_model_config(cfg):
    """The model a run of `cfg` builds, without its data: hf_dir's config.json when it is a local folder, else
    `cfg.model`; the config's dtypes and remat (storage dtype "" without hf_dir: fp16, as HF LLaVA folders store)."""
    import os

    from vkd_jax.models.config import config_from_model_dict
    from vkd_jax.models.hf_io import read_model_config

    hf_dir = str(cfg.get("hf_dir", "") or "")
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "config.json")):
        mc = read_model_config(hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None)
    else:
        default = "float16" if cfg.data.source == "local" else "float32"
        mc = config_from_model_dict(cfg.model.to_dict(), dtype=cfg.dtype, param_dtype=cfg.param_dtype or default)
    remat = str(cfg.get("remat", "none"))
    return mc.with_remat(remat) if remat != "none" else mc


def num_splits(cfg) -> int:
    """Forget splits a run unlearns (splits=0: every person once, 100 / forget_ratio splits)."""
    return int(cfg.splits) or max(1, 100 // int(cfg.forget_ratio))


def eval_prompts(cfg) -> int:
    if cfg.data.source == "embedded":  # the worlds' own sizes: every person and celebrity, about 8 prompts each
        w = cfg.data.clear_world if cfg.data.benchmark == "clear" else cfg.data.world
        people = int(w.get("num_people", 100)) + int(w.get("num_celebrities", w.get("num_real_faces", 20)))
        return people * 8
    n = EVAL_PROMPTS[cfg.data.benchmark]
    return min(n, int(cfg.eval.max_questions)) if int(cfg.eval.max_questions) else n


def pipeline_stages(cfg) -> list[Stage]:
    """What main runs for `cfg`, in order (module doc)."""
    import ml_collections

    from vkd_jax import experiment
    from vkd_jax.unlearn.methods import make_method

    method = make_method(cfg.method, ml_collections.ConfigDict(dict(cfg.get(cfg.method, {}) or {})))
    out = []
    for name in (["pretrain"] if cfg.data.source == "embedded" else []) + ["vanilla"]:
        if int(cfg.stages[name].num_steps) > 0:
            out.append(Stage(name, "train", name, int(cfg.stages[name].num_steps)))
    if experiment.uses_reference(cfg, method, cfg.data.benchmark):
        out.append(Stage("reference", "train", "reference", int(cfg.stages.reference.num_steps)))
    k = num_splits(cfg)
    if experiment.uses_masks(cfg, method):
        out.append(Stage("masks", "masks", "unlearn", 2 * int(cfg.mask.num_batches), k))
    out.append(Stage("unlearn", "train", "unlearn", int(cfg.stages.unlearn.num_steps), k))
    out.append(Stage("eval", "eval", repeats=2 * k))  # the vanilla and the unlearned model, on each split's sets
    forget_vqa = max(1, eval_prompts(cfg) // 20)  # the forget people's VQA questions: the attack's pool
    for f in cfg.stages.relearn.fractions:
        attacks = len(experiment.relearn_windows(1000, float(f), float(cfg.stages.relearn.cross_fit_from)))
        held_out = round((1 - float(f)) * forget_vqa)
        out.append(Stage(f"relearn@{float(f):g}", "train", "relearn", int(cfg.stages.relearn.num_steps),
                         k * attacks, eval_prompts=2 * held_out))
    if bool(cfg.eval.get("probe", True)):
        out.append(Stage("probe", "probe", repeats=2 * k))
    if bool(cfg.get("export_hf", False)):
        out.append(Stage("export", "export"))
    return out


def mesh_of(cfg, platform: Platform, devices):
    """The config's own mesh (`mesh.*`, -1: the rest of the devices) on `platform`'s chips."""
    from vkd_jax.unlearn import partition as pt
    return pt.make_mesh(cfg.mesh, devices[:platform.chips])


def stage_step(cfg, mc, stage: str, mesh, text_len: int):
    """The stage's train step as `stages._train_stage` builds it, on `mesh` (a vkd_jax.plan.PlannedStep)."""
    import jax
    import ml_collections

    from vkd_jax.plan import PlannedStep, dummy_batch
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.step import build_step
    from vkd_jax.unlearn.train import prepare_batch

    scfg = cfg.stages[stage]
    method_name, preset = stages.stage_method(cfg, stage), stages.stage_partition(cfg, stage)
    mcfg = ml_collections.ConfigDict(dict(cfg.get(method_name, {}) or {}))
    if "streams" in scfg:
        mcfg.streams = tuple(scfg.streams)
    method = make_method(method_name, mcfg)
    axis_rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.mesh.axis_rules)
    built = build_step(mc, method, partition_cfg=stages.partition_cfg(cfg, preset, mc),
                       optim_cfg=stages.optim_cfg(cfg, scfg), num_steps=max(int(scfg.num_steps), 1), mesh=mesh,
                       axis_rules=axis_rules)
    batch = int(cfg.data.batch_size)
    host = {s: prepare_batch(dummy_batch(mc, batch, text_len, image=s != "qa"), method, s) for s in method.streams}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
    return PlannedStep(built, abstract, host, mc, method_name, preset, mc.text.remat, text_len)


def with_layers(mc, text: int, vision: int):
    """The model config with `text` decoder and `vision` encoder layers (the same widths)."""
    return mc.replace(text=dataclasses.replace(mc.text, num_hidden_layers=text),
                      vision=dataclasses.replace(mc.vision, num_hidden_layers=vision))


def by_layer_slopes(mc, f) -> float:
    """f(model config) at the config's depth, from three shallow proxies: a transformer's activations and FLOPs
    are linear in its layer counts, f(T, V) = f(2, 2) + (T - 2) (f(3, 2) - f(2, 2)) + (V - 2) (f(2, 3) - f(2, 2)),
    so a 7B stage costs three 2-3 layer traces instead of one of the whole model. Models of at most 3 layers per
    tower are traced as they are."""
    t, v = mc.text.num_hidden_layers, mc.vision.num_hidden_layers
    if t <= 3 and v <= 3:
        return f(mc)
    base = f(with_layers(mc, 2, 2))
    return (base + (t - 2) * (f(with_layers(mc, 3, 2)) - base) + (v - 2) * (f(with_layers(mc, 2, 3)) - base))


def step_flops(ps) -> float:
    """Matmul FLOPs of one train step (global): vkd_jax.flops.dot_flops on the built step's jaxpr, traced on
    abstract values (remat recompute included)."""
    import jax

    from vkd_jax.flops import dot_flops
    b = ps.built
    return dot_flops(jax.make_jaxpr(b.step)(b.abstract_state, ps.batch, b.abstract_frozen, b.abstract_aux).jaxpr)


def step_bytes_moved(b: dict, remat: str) -> float:
    """One device's memory traffic in a train step (a lower bound: fused kernels, no spills): every weight read
    in the forward and the backward pass (and once more to recompute, with remat), the saved activations written
    and read once, the trainable params, their gradients and the optimizer state read and written once."""
    weights = b["params_trainable"] + b["params_frozen"] + b.get("teacher", 0)
    return float((3 if remat != "none" else 2) * weights + 2 * b["saved_activations"]
                 + 2 * (2 * b["params_trainable"] + b["opt_state"]))


def model_sizes(mc) -> dict:
    """Parameter count and bytes (storage dtype), and the visual side's count."""
    import numpy as np

    from vkd_jax.models.hf_io import abstract_model
    ab = abstract_model(mc)[1]
    return {"count": int(sum(math.prod(s.shape) for s in ab.values())),
            "bytes": int(sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in ab.values())),
            "visual": int(sum(math.prod(s.shape) for k, s in ab.items()
                              if k.startswith(("vision_tower/", "projector/"))))}


def eval_bytes(mc, sizes: dict, cfg, seq: int) -> dict:
    """One device's memory while it decodes a batch: the whole model (storage dtype), the KV cache of the prompt
    and the new tokens, the prefill's logits (float32), one MLP's activations."""
    import numpy as np

    from vkd_jax.models.config import to_jnp_dtype
    t, b, new = mc.text, int(cfg.eval.batch_size), int(cfg.eval.max_new_tokens)
    act = np.dtype(to_jnp_dtype(mc.dtype)).itemsize
    kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    head_dim = t.hidden_size // t.num_attention_heads
    return {"params": sizes["bytes"],
            "kv_cache": 2 * t.num_hidden_layers * b * (seq + new) * kv_heads * head_dim * act,
            "logits": b * seq * t.vocab_size * 4, "activations": 2 * b * seq * t.intermediate_size * act}


def eval_seconds(sizes: dict, kv_bytes: int, prompts: int, cfg, seq: int, platform: Platform) -> float:
    """Prompts on one device: prefill at MFU of its peak, each new token reading the weights and the KV cache."""
    b, new = int(cfg.eval.batch_size), int(cfg.eval.max_new_tokens)
    batches = -(-prompts // b)
    prefill = 2 * sizes["count"] * b * seq / (platform.peak_tflops * 1e12 * MFU)
    decode = new * (sizes["bytes"] + kv_bytes) / (platform.hbm_gbps * 1e9 * BW_EFF)
    return batches * (prefill + decode)


def plan_stage(cfg, mc, s: Stage, p: Platform, devices, sizes: dict, seq: int, text_len: int, memo: dict,
               with_time: bool = True) -> dict:
    """One stage on one platform: the row of the plan (module doc)."""
    from vkd_jax.plan import plan_row, saved_key
    from vkd_jax.unlearn import partition as pt

    row = {"platform": p.name, "stage": s.name, "hbm_gib": round(p.hbm_gib, 2), "chips": p.chips,
           "repeats": s.repeats}
    flops = moved = seconds = 0.0
    if s.kind in ("train", "masks"):
        mesh = mesh_of(cfg, p, devices)
        shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
        if int(cfg.data.batch_size) % shards:  # the run itself would stop at its first batch
            row.update(peak_gib=None, fits=False, mesh=dict(mesh.shape), bytes_gib={},
                       error=f"global batch {int(cfg.data.batch_size)} does not divide over the {shards} batch "
                             f"shards (data x fsdp) of mesh {dict(mesh.shape)}")
            if with_time:
                row.update(flops=0.0, bytes_moved=0.0, seconds=0.0)
            return row
        ps = stage_step(cfg, mc, s.stage, mesh, text_len)
        rows_memo = memo.setdefault("rows", {})
        key = saved_key(ps, int(cfg.data.batch_size))
        if key not in rows_memo:  # what the loss saves, by layer slopes (plan_row reads it from the memo)
            one = pt.make_mesh(None, devices[:1])  # global counts: any mesh

            def saved_of(m):
                q = stage_step(cfg, m, s.stage, one, text_len)
                return plan_row(q, p, int(cfg.data.batch_size), s.name, memo={})["bytes"]["saved_activations"]
            rows_memo[key] = by_layer_slopes(mc, saved_of)
        b = dict(plan_row(ps, p, int(cfg.data.batch_size), s.name, memo=rows_memo)["bytes"])
        streams = max(len(ps.batch), 1)
        if s.kind == "masks":  # one stream per batch, its gradients and two Fisher sums; no optimizer state
            n_train = sum(math.prod(x.shape) for x in ps.built.abstract_state.trainable.values())
            b.update(opt_state=0, fisher=2 * 4 * n_train)
        b["peak_est"] = sum(v for k, v in b.items() if k in ("params_trainable", "params_frozen", "teacher",
                                                              "opt_state", "batch", "act_est", "fisher"))
        if with_time:
            costs = memo.setdefault("flops", {})
            key = (ps.method_name, ps.preset, tuple(sorted(ps.batch)))
            if key not in costs:
                costs[key] = by_layer_slopes(mc, lambda m: step_flops(stage_step(cfg, m, s.stage, mesh, text_len)))
            per = s.steps / streams if s.kind == "masks" else s.steps  # masks: one stream per batch
            flops, moved = costs[key] * per, step_bytes_moved(b, ps.remat) * per
            seconds = flops / (p.chips * p.peak_tflops * 1e12 * MFU)
            if s.eval_prompts:
                kv = eval_bytes(mc, sizes, cfg, seq)["kv_cache"]
                seconds += eval_seconds(sizes, kv, s.eval_prompts, cfg, seq, p)
        row.update(mesh=dict(ps.built.mesh.shape), method=ps.method_name, partition=ps.preset, remat=ps.remat)
        peak = b["peak_est"]
    elif s.kind == "eval":
        n = eval_prompts(cfg)
        b = eval_bytes(mc, sizes, cfg, seq)
        peak = sum(b.values())
        new = int(cfg.eval.max_new_tokens)
        flops = 2.0 * sizes["count"] * n * (seq + new)
        moved = float(-(-n // int(cfg.eval.batch_size)) * new * (sizes["bytes"] + b["kv_cache"]))
        seconds = eval_seconds(sizes, b["kv_cache"], n, cfg, seq, p) if with_time else 0.0
        row["prompts"] = n
    elif s.kind == "probe":  # the visual side's features of the probe's images, on one device
        v = mc.vision
        images = PROBE_IMAGES[cfg.data.benchmark] if cfg.data.source == "local" else 1000
        b = {"params": sizes["bytes"], "activations": 64 * (v.num_patches + 1) * v.intermediate_size * 4}
        peak = sum(b.values())
        flops = 2.0 * sizes["visual"] * images * (v.num_patches + 1)
        moved = float(sizes["bytes"])
        seconds = flops / (p.peak_tflops * 1e12 * MFU) if with_time else 0.0
    else:  # export: the host writes the merged params; nothing on the devices
        b, peak = {}, 0
        moved = float(sizes["bytes"])
        seconds = moved / (DISK_GBPS * 1e9)
    row.update(peak_gib=round(peak / GIB, 3), fits=bool(peak <= p.hbm_gib * GIB),
               bytes_gib={k: round(v / GIB, 6) for k, v in b.items()})
    if with_time:
        row.update(flops=flops * s.repeats, bytes_moved=moved * s.repeats, seconds=seconds * s.repeats)
    return row


def plan_pipeline(cfg, platforms, *, text_len: int = 128, devices=None, log=print, with_time: bool = True) -> dict:
    """{"model", "assumptions", "stages": [row, ...], "totals": {platform: {...}}} (module doc)."""
    import jax

    mc = pipeline_model_config(cfg)
    devices = list(devices if devices is not None else jax.devices())
    sizes = model_sizes(mc)
    seq = 1 + mc.image_seq_length + text_len
    stages_ = pipeline_stages(cfg)
    memo: dict = {}
    check_devices(platforms, devices)
    rows = []
    for p in platforms:
        for s in stages_:
            rows.append(plan_stage(cfg, mc, s, p, devices, sizes, seq, text_len, memo, with_time))
            log(format_stage_row(rows[-1]))
    totals = {}
    for p in platforms:
        rs = [r for r in rows if r["platform"] == p.name]
        totals[p.name] = {"fits": all(r["fits"] for r in rs),
                          "peak_gib": max((r["peak_gib"] for r in rs if r["peak_gib"] is not None), default=None),
                          "hbm_gib": p.hbm_gib, "too_big": [r["stage"] for r in rs if not r["fits"]]}
        if with_time:
            totals[p.name]["seconds"] = sum(r["seconds"] for r in rs)
    return {"model": {"params": sizes["count"], "text_layers": mc.text.num_hidden_layers,
                      "vision_layers": mc.vision.num_hidden_layers, "hidden": mc.text.hidden_size,
                      "storage_dtype": mc.param_dtype, "compute_dtype": mc.dtype, "remat": mc.text.remat},
            "assumptions": {"mfu": MFU, "decode_bandwidth_efficiency": BW_EFF, "disk_gbps": DISK_GBPS,
                            "text_len": text_len, "seq_len": seq, "splits": num_splits(cfg),
                            "eval_prompts": eval_prompts(cfg), "eval_on_one_device": True,
                            "platforms": {p.name: dataclasses.asdict(p) for p in platforms}},
            "stages": rows, "totals": totals}


def format_stage_row(r: dict) -> str:
    t = f" {r['seconds'] / 3600:8.2f} h" if "seconds" in r else ""
    if "error" in r:
        return f"{r['platform']:9s} {r['stage']:13s} CANNOT RUN: {r['error']}"
    return (f"{r['platform']:9s} {r['stage']:13s} peak {r['peak_gib']:8.2f} / {r['hbm_gib']:6.1f} GiB "
            f"{'fits' if r['fits'] else 'DOES NOT FIT'}{t}" + (f" x{r['repeats']}" if r["repeats"] > 1 else ""))


def markdown(plan: dict) -> str:
    """The plan as a table: a row per stage, a column per platform, each cell peak GiB per device and hours
    (x the repeats); the last row the totals."""
    platforms = list(plan["totals"])
    stages = list(dict.fromkeys(r["stage"] for r in plan["stages"]))
    cell = {(r["platform"], r["stage"]): r for r in plan["stages"]}

    def fmt(r):
        if r is None:
            return ""
        if "error" in r:
            return "cannot run (batch)"
        h = f", {r['seconds'] / 3600:.2f} h" if "seconds" in r else ""
        return f"{r['peak_gib']:.1f}{'' if r['fits'] else ' **no**'}{h}"

    head = "| stage | " + " | ".join(f"{p} ({plan['totals'][p]['hbm_gib']:g} GiB)" for p in platforms) + " |"
    lines = [head, "|---" * (len(platforms) + 1) + "|"]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(fmt(cell.get((p, s))) for p in platforms) + " |")
    tot = plan["totals"]
    lines.append("| **total** | " + " | ".join(
        ("fits" if tot[p]["fits"] else "does not fit") + (f", {tot[p]['seconds'] / 3600:.1f} h" if "seconds" in
                                                          tot[p] else "") for p in platforms) + " |")
    return "\n".join(lines)
