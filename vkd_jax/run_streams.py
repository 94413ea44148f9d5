"""A run's data: the benchmark prepared in the shared folder, and each stage's training streams as input pipelines,
each seeded from its (stage, stream) name by a stable function of the config."""

from __future__ import annotations

import os
import zlib

import jax

from vkd_jax.errors import ConfigError


def prepare_data(cfg, shared: str, local_cache: str | None = None):
    """The configured benchmark (vkd_jax.benchmarks), its data generated or checked and its tokenizer."""
    from vkd_jax.benchmarks import make_benchmark

    return make_benchmark(cfg, shared, local_cache)


def stream_seed(cfg, stage: str, stream: str) -> int:
    """The input-pipeline seed of one (stage, stream) of a run, derived from the names and the stage's seed
    (config_base.stage_seed): a new stream or stage changes no other stream's order."""
    from vkd_jax.config_base import stage_seed

    return zlib.crc32(f"{stage}/{stream}/{stage_seed(cfg, stage)}".encode())


def build_pipeline(bench, cfg, spec, seed: int, model_config):
    """A StreamSpec -> an infinite, resumable, shuffled training pipeline of the run's batch and length rules."""
    from vkd_jax.data.pipeline import InputPipeline, PipelineConfig

    mc = model_config
    pcfg = PipelineConfig(tasks=tuple(spec.tasks), types=tuple(spec.types), train=True,
                          global_batch_size=int(cfg.data.batch_size), max_len=int(cfg.data.max_len) or None,
                          length_buckets=tuple(cfg.data.length_buckets), padding_side="right", shuffle=True,
                          seed=seed, num_epochs=None, image_seq_length=mc.image_seq_length,
                          image=image_processor(cfg, mc), num_threads=int(cfg.data.num_threads),
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          keys=spec.keys, resample_options=spec.resample_options,
                          cls_answer=str(cfg.data.cls_answer))
    return InputPipeline(spec.source, bench.tokenizer, pcfg, examples=spec.examples)


def hf_image_processor(cfg):
    """hf_dir's preprocessor_config.json (what its processor does to an image), or None without one."""
    from vkd_jax.preprocess import ImageProcessorConfig

    hf_dir = cfg.hf_dir
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "preprocessor_config.json")):
        return ImageProcessorConfig.from_hf_dir(hf_dir)
    return None


def image_processor(cfg, model_config):
    """The model's image preprocessing: hf_dir's, else CLIP's at the model's image size."""
    from vkd_jax.data.pipeline import image_config

    return hf_image_processor(cfg) or image_config(model_config.vision.image_size)


def stage_streams(name: str, bench, cfg, model_config, method=None) -> dict:
    """The training pipelines a stage reads: its config's streams (pretrain, vanilla, reference), forget and retain
    (masks), or its method's (unlearn: the run's `method`); VQA and QA never share a batch."""
    specs = bench.stage_streams(name)
    if name in ("pretrain", "vanilla", "reference"):
        wanted = tuple(cfg.stages[name].streams)
    elif name == "masks":
        wanted = ("forget", "retain")
    else:
        wanted = method.streams
    unknown = [s for s in wanted if s not in specs]
    if unknown:
        raise ConfigError(f"stage {name!r} reads streams {unknown}, which benchmark {bench.name!r} does not have "
                          f"(it has {sorted(specs)})")
    out = {}
    for s in wanted:
        spec = specs[s]() if callable(specs[s]) else specs[s]
        out[s] = build_pipeline(bench, cfg, spec, stream_seed(cfg, name, s), model_config)
    return out
