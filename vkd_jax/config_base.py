"""What every pipeline config shares, written once; `configs/*.py` set only what differs (a screen each).

Every field has one meaning and one place:
  method                   the unlearning method; the unlearn stage runs it, training `method_partition[method]`
  splits                   how many disjoint forget splits of forget_ratio a run unlearns, each from the same vanilla
                           model (the embedded worlds; a download has its own one): results pool their questions;
                           0: as many as the world holds (every person forgotten once)
  forget_ratio, seed       forget_5/10/15; the pipeline seed: init, data order and dropout of the stages that build
                           the model before unlearning (pretrain, vanilla, reference) and the evaluation draws
  unlearn_seed             data order and dropout of masks, unlearn and relearn (-1: `seed`); `reproduce` varies it
                           below one vanilla model of each pipeline seed
  vanilla_model            auto (a shipped vanilla model whose fingerprint equals this config's, else train) |
                           shipped (that, or stop) | train (always train): vkd_jax.shipped
  hf_dir                   a local HF LLaVA folder or its repo id in the local HF cache (real runs; vkd_jax.hub),
                           or "" (the embedded tiny model, built from `model`)
  dtype / param_dtype      compute dtype / storage dtype of the weights ("" = as hf_dir stores each tensor)
  export_hf / export_dtype write <workdir>/hf_export; its dtype ("" = each tensor's storage dtype)
  remat                    activation checkpointing per block: none | full | dots
  preflight                before any work, plan every stage on this run's devices and stop when one cannot fit
                           (vkd_jax.plan_pipeline; skipped where the devices report no memory, as CPUs)
  preflight_device_gib     per-device memory the preflight assumes (0: what the devices report)
  data.*, eval.*           the benchmark (mllmu | clear), its source (embedded | local) and the input pipeline;
                           the evaluation protocol (vkd_jax.eval)
  partition.*              trainable-set details shared by all stages (vit_last_k, LoRA, dtypes, rules)
  mesh.*, optim.*          the device mesh; the optimiser fields every stage shares (Adam, clip, decay, accum)
  stages.<stage>           pretrain / vanilla / reference / unlearn / relearn: num_steps, its learning rate and
                           schedule (`optim`), and for the training stages method, streams and partition; unlearn
                           adds use_masks; relearn fractions and cross_fit_from (fractions >= it attack
                           ceil(1/(1-p)) times from evenly spaced windows of the forget questions, so every question
                           is held out at least once; > 1: one attack per fraction)
  mask.*, checkpoint.*     saliency masks; checkpoint cadence
  <method>.*               each method's own switches (vkd, ga, gd, kl, npo, idk, mmunlearner)

Variants in the big_vision way: `get_config("method=ga,forget=5")`, on the command line
`--config configs/tiny.py:method=ga,forget=5`; the keys are `VARIANT_KEYS`. `load_config("configs/tiny.py:...")`
reads a config file where no flags parse it (tests, scripts).
"""

from __future__ import annotations

import importlib.util
import os
import zlib

import ml_collections

# key of get_config(arg) -> (field, type)
VARIANT_KEYS = {"method": ("method", str), "forget": ("forget_ratio", int), "seed": ("seed", int),
                "unlearn_seed": ("unlearn_seed", int),
                "steps": ("stages.unlearn.num_steps", int), "benchmark": ("data.benchmark", str),
                "splits": ("splits", int)}


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.unlearn_seed = -1
    c.method = "vkd"
    c.forget_ratio = 10
    c.splits = 1
    c.vanilla_model = "auto"
    c.hf_dir = ""
    c.dtype = "float32"
    c.param_dtype = "float32"
    c.export_hf = False
    c.export_dtype = ""
    c.remat = "none"
    c.preflight = True
    c.preflight_device_gib = 0.0
    c.data = ml_collections.ConfigDict(dict(
        benchmark="mllmu",    # mllmu (MLLMU-Bench) | clear (CLEAR): vkd_jax.data.benchmarks
        source="embedded",    # embedded (generated into <workdir>/benchmark) | local (a download in manual_dir)
        manual_dir="", tfds_dir="", world_seed=0, world=dict(), clear_world=dict(), generic_images="",
        batch_size=32, num_threads=2, max_len=0, length_buckets=(64, 128, 256, 512, 1024), resample_options=False,
        cls_answer="letter", celebrity_repeat=1, train_tasks=("ft", "classification", "generation", "cloze")))
    c.eval = ml_collections.ConfigDict(dict(
        max_new_tokens=50, batch_size=8, max_questions=0, few_shot=False, few_shot_cls=1, few_shot_cloze=2,
        retain_max_profiles=0, cls_scoring="generate", cls_parse="official", test_pose="mean",
        clear_reading="followup",  # CLEAR: followup (MMUnlearner's, the paper's) | official (the benchmark's own)
        clear_official_rows=300, clear_official_max_new_tokens=300,  # the official reading's ds_size, generation
        probe=True))               # the representation probe attack (vkd_jax.eval.probe)
    c.partition = ml_collections.ConfigDict(dict(
        vit_last_k=1, extra_rules=(), frozen_dtype="", master_dtype="float32",
        lora=dict(rank=16, alpha=16.0, dropout=0.05), sharding_rules=None))
    c.mesh = ml_collections.ConfigDict(dict(
        data=-1, fsdp=1, tensor=1,
        axis_rules=(("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                    ("vocab", "tensor"))))
    # optimiser fields every stage shares; each stage's learning rate and schedule are its own (stages.<s>.optim)
    c.optim = ml_collections.ConfigDict(dict(
        warmup_steps=0, end_lr_factor=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0, grad_accum=1,
        max_skipped_steps=10))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, keep=2, async_save=True, log_every=10))
    c.mask = ml_collections.ConfigDict(dict(tau=1.0, top_p=0.0, num_batches=8, modules="unlearn"))
    c.vkd = ml_collections.ConfigDict(dict(
        taps=("projector",), distance="mse", a_f=1.0, forget_loss="ga", ga_bound=5.0, a_r=0.0, b_r=10.0, b_f=0.0,
        forget_kd="none", push_margin=1.0, target_image="mean", beta=0.4, b_g=0.0,
        augment="none", augment_retain=False, aug_rotation=12.0, aug_scale=0.08, aug_shift=0.04))
    c.ga = ml_collections.ConfigDict(dict(ga_bound=0.0))
    c.gd = ml_collections.ConfigDict(dict(ga_bound=0.0, retain_weight=1.0))
    c.kl = ml_collections.ConfigDict(dict(ga_bound=0.0, retain_weight=1.0, kl_weight=1.0))
    c.npo = ml_collections.ConfigDict(dict(beta=0.4, retain_weight=0.0, mean_token=False, reference="retain"))
    c.idk = ml_collections.ConfigDict(dict(retain_weight=1.0, refusal="I don't know."))
    c.mmunlearner = ml_collections.ConfigDict(dict(retain_steps=1, ga_bound=0.0))
    c.method_partition = ml_collections.ConfigDict(dict(vkd="visual", ga="full", gd="full", kl="full", npo="full",
                                                        idk="full", mmunlearner="full"))
    def optim(schedule):  # a fresh dict per stage: ConfigDict would share one object between stages
        return dict(lr=1e-3, schedule=schedule)
    c.stages = ml_collections.ConfigDict(dict(
        pretrain=dict(method="ft", streams=("vqa", "qa"), partition="full", num_steps=0, optim=optim("linear")),
        vanilla=dict(method="ft", streams=("vqa", "qa"), partition="full", num_steps=0, optim=optim("linear")),
        reference=dict(method="ft", streams=("vqa", "qa"), partition="full", num_steps=0, optim=optim("linear")),
        unlearn=dict(num_steps=100, use_masks=False, optim=optim("constant")),
        relearn=dict(method="ft", streams=("forget",), partition="full", num_steps=50, fractions=(0.1, 0.25, 0.5),
                     cross_fit_from=0.5, optim=optim("constant"))))
    return c


PIPELINE_STAGES = ("pretrain", "vanilla", "reference")


def stage_seed(c, stage: str) -> int:
    """The seed of one stage: `seed` for the stages that build the model before unlearning, `unlearn_seed` (or
    `seed` when it is -1) for masks, unlearn and relearn."""
    u = int(c.get("unlearn_seed", -1))
    return int(c.seed) if stage in PIPELINE_STAGES or u < 0 else u


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`"method=ga,forget=5"` -> those fields set (VARIANT_KEYS); an unknown key is an error naming the known."""
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in VARIANT_KEYS:
            raise ValueError(f"config variant {item!r}: expected key=value with key one of {sorted(VARIANT_KEYS)}")
        field, kind = VARIANT_KEYS[key]
        node = c
        *parents, leaf = field.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = kind(value.strip())
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config file's get_config(arg), from "path/to/config.py" or "path/to/config.py:arg" (what config_flags
    accepts on the command line), for code that does not parse flags."""
    path, _, arg = os.fspath(spec).partition(":")
    name = f"vkd_config_{zlib.crc32(os.path.abspath(path).encode()):08x}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None or not os.path.isfile(path):
        raise FileNotFoundError(f"config {spec!r}: {path} is not a python config file")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)
