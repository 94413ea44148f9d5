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
  stages.<stage>           each of TRAIN_STAGES: num_steps, its learning rate and schedule (`optim`), and for the
                           fine-tuning stages method, streams (the fields of ft) and partition; unlearn adds
                           use_masks and its stopping rule (stop_rule, stop_every, stop_margin: vkd_jax.stopping);
                           relearn fractions and cross_fit_from (fractions >= it attack ceil(1/(1-p)) times from
                           evenly spaced windows of the forget questions, so every question is held out at least
                           once; > 1: one attack per fraction)
  mask.*, checkpoint.*     saliency masks; checkpoint cadence
  <method>.*               each unlearning method's own fields; they, their allowed values and the method's default
                           `method_partition` are declared beside its loss (vkd_jax.unlearn.methods) and read here

Variants in the big_vision way: `get_config("method=ga,forget=5")`, on the command line
`--config configs/tiny.py:method=ga,forget=5`; the keys are `VARIANT_KEYS`. `load_config("configs/tiny.py:...")`
reads a config file where no flags parse it (tests, scripts).
"""

from __future__ import annotations

import importlib.util
import os
import zlib

import ml_collections

from vkd_jax.errors import ConfigError
from vkd_jax.eval.runner import EvalConfig
from vkd_jax.unlearn.methods import METHODS
from vkd_jax.unlearn.partition import DEFAULT_AXIS_RULES

# key of get_config(arg) -> (field, type)
VARIANT_KEYS = {"method": ("method", str), "forget": ("forget_ratio", int), "seed": ("seed", int),
                "unlearn_seed": ("unlearn_seed", int),
                "steps": ("stages.unlearn.num_steps", int), "benchmark": ("data.benchmark", str),
                "splits": ("splits", int)}

# The stages, declared once (the stages module runs them, the config check validates their sections):
PIPELINE_STAGES = ("pretrain", "vanilla", "reference")    # build the model before unlearning; seeded by `seed`
STAGES = PIPELINE_STAGES + ("masks", "unlearn", "relearn")  # the run order
TRAIN_STAGES = tuple(s for s in STAGES if s != "masks")     # a section config.stages.<s> each (masks: config.mask)
# the streams a fine-tuning stage may train on (unlearn reads the streams its method names)
STAGE_STREAMS = {**dict.fromkeys(PIPELINE_STAGES, ("vqa", "qa", "caption")), "relearn": ("forget",)}


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
        benchmark="mllmu",    # mllmu (MLLMU-Bench) | clear (CLEAR): vkd_jax.benchmarks
        source="embedded",    # embedded (generated into <workdir>/benchmark) | local (a download in manual_dir)
        manual_dir="", tfds_dir="", world_seed=0, world=dict(), clear_world=dict(), generic_images="",
        batch_size=32, num_threads=2, max_len=0, length_buckets=(64, 128, 256, 512, 1024), resample_options=False,
        cls_answer="letter", celebrity_repeat=1, train_tasks=("ft", "classification", "generation", "cloze")))
    ev = EvalConfig()  # the evaluator's defaults; max_questions 0: every question
    c.eval = ml_collections.ConfigDict(dict(
        max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, max_questions=0, few_shot=ev.few_shot,
        few_shot_cls=ev.few_shot_cls, few_shot_cloze=ev.few_shot_cloze, retain_max_profiles=0,
        cls_scoring=ev.cls_scoring, cls_parse=ev.cls_parse, test_pose=ev.test_pose,
        clear_reading="followup",  # CLEAR: followup (MMUnlearner's, the paper's) | official (the benchmark's own)
        clear_official_rows=300, clear_official_max_new_tokens=300,  # the official reading's ds_size, generation
        probe=True))               # the representation probe attack (vkd_jax.eval.probe)
    c.partition = ml_collections.ConfigDict(dict(
        vit_last_k=1, extra_rules=(), frozen_dtype="", master_dtype="float32",
        lora=dict(rank=16, alpha=16.0, dropout=0.05), sharding_rules=None))
    c.mesh = ml_collections.ConfigDict(dict(
        data=-1, fsdp=1, tensor=1,
        axis_rules=DEFAULT_AXIS_RULES))
    # optimiser fields every stage shares; each stage's learning rate and schedule are its own (stages.<s>.optim)
    c.optim = ml_collections.ConfigDict(dict(
        warmup_steps=0, end_lr_factor=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0, grad_accum=1,
        max_skipped_steps=10))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, keep=2, async_save=True, log_every=10))
    c.mask = ml_collections.ConfigDict(dict(tau=1.0, top_p=0.0, num_batches=8, modules="unlearn"))
    unlearning = {name: spec for name, spec in METHODS.items() if spec.unlearning}
    for name, spec in unlearning.items():
        c[name] = ml_collections.ConfigDict(dict(spec.fields))
    c.method_partition = ml_collections.ConfigDict({name: spec.partition for name, spec in unlearning.items()})
    def optim(schedule):  # a fresh dict per stage: ConfigDict would share one object between stages
        return dict(lr=1e-3, schedule=schedule)
    ft = dict(method="ft", **METHODS["ft"].fields, partition="full", num_steps=0)  # ft's fields: the stage's own
    sections = dict(
        pretrain=dict(ft, optim=optim("linear")), vanilla=dict(ft, optim=optim("linear")),
        reference=dict(ft, optim=optim("linear")),
        # stop_rule: none | floor (vkd_jax.stopping): checked every stop_every steps, floor + stop_margin points
        unlearn=dict(num_steps=100, use_masks=False, stop_rule="none", stop_every=25, stop_margin=0.0,
                     optim=optim("constant")),
        relearn=dict(ft, streams=("forget",), num_steps=50, fractions=(0.1, 0.25, 0.5), cross_fit_from=0.5,
                     optim=optim("constant")))
    c.stages = ml_collections.ConfigDict({s: sections[s] for s in TRAIN_STAGES})
    return c


def stage_seed(c, stage: str) -> int:
    """The seed of one stage: `seed` for the stages that build the model before unlearning, `unlearn_seed` (or
    `seed` when it is -1) for masks, unlearn and relearn."""
    u = int(c.unlearn_seed)
    return int(c.seed) if stage in PIPELINE_STAGES or u < 0 else u


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`"method=ga,forget=5"` -> those fields set (VARIANT_KEYS); an unknown key is an error naming the known."""
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in VARIANT_KEYS:
            raise ConfigError(f"config variant {item!r}: expected key=value with key one of {sorted(VARIANT_KEYS)}")
        field, kind = VARIANT_KEYS[key]
        try:
            value = kind(value.strip())
        except ValueError:
            raise ConfigError(f"config variant {item!r}: {key} takes an {kind.__name__}") from None
        set_field(c, field, value)
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config file's get_config(arg), from "path/to/config.py" or "path/to/config.py:arg" (what config_flags
    accepts on the command line), for code that does not parse flags."""
    path, _, arg = os.fspath(spec).partition(":")
    name = f"vkd_config_{zlib.crc32(os.path.abspath(path).encode()):08x}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None or not os.path.isfile(path):
        raise ConfigError(f"config {spec!r}: {path} is not a python config file")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def config_from_flag(flag) -> ml_collections.ConfigDict:
    """The config a command line `--config path[:variant] --config.<field>=...` means (`flag`: FLAGS["config"]).
    Setting a variant key's field on the command line means that variant: `--config.data.benchmark=clear` is
    `path:benchmark=clear` (a config file may set more for a variant than the field itself, as configs/tiny.py does
    for CLEAR), so the file is built again with those variant keys, then every override applied on top."""
    from ml_collections import config_flags

    overrides = config_flags.get_override_values(flag)
    key_of = {field: key for key, (field, _) in VARIANT_KEYS.items()}
    keys = [f"{key_of[f]}={v}" for f, v in overrides.items() if f in key_of]
    if not keys:
        return flag.value
    spec = config_flags.get_config_filename(flag)
    c = load_config(spec + ("," if ":" in spec else ":") + ",".join(keys))
    for field, value in overrides.items():
        set_field(c, field, value)
    return c


def set_field(c: ml_collections.ConfigDict, dotted: str, value) -> None:
    """`c.<dotted> = value` for a dotted field name ("stages.unlearn.num_steps")."""
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value
