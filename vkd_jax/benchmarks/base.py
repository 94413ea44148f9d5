"""What a benchmark is to the pipeline: it prepares its data, declares each stage's training streams as data, and
evaluates a model on its own sets with its own scoring.

    bench = make_benchmark(cfg, shared, local_cache)   # vkd_jax.benchmarks
    bench.tokenizer, bench.forget_pct
    bench.stage_streams("unlearn")    # {stream name: StreamSpec}: which rows, tasks and forms a stage trains on
    bench.evaluate(model, ecfg, records)               # {set: {metric: value}}, records filled per question
    bench.relearn_keys(), bench.relearn_stream(keys), bench.relearn_score(model, ecfg, exclude, records)
    bench.identity_free_floor(model, ecfg, records)
The orchestrator (vkd_jax.experiment) turns StreamSpecs into input pipelines, each seeded from its (stage, stream)
name; the streams a stage really reads are its config's `streams` (training stages) or its method's (masks,
unlearn). Adding a benchmark: a module here and one line in `BENCHMARKS` (vkd_jax/benchmarks/__init__.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, ClassVar

from absl import logging

from vkd_jax.errors import ConfigError
from vkd_jax.io_utils import local_cache_dir


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    source: Any                        # random-access rows (a TFDS data source or a view of one)
    tasks: tuple[str, ...]
    types: tuple[str, ...]
    examples: Callable                 # (row, tasks, types, cls_answer) -> examples (vkd_jax.data.pipeline)
    resample_options: bool = False
    keys: tuple | None = None          # restrict to these (ID, item) questions (relearning subsets)


def benchmark_dir(shared: str, local_cache: str | None = None) -> str:
    """<shared>/benchmark, or its local cache when `shared` is remote (pyarrow, TFDS and tokenizers need local
    files; each host builds it there)."""
    return os.path.join(local_cache_dir(shared, local_cache), "benchmark")


def check_world(path: str, world, seed: int) -> None:
    """A work directory's embedded benchmark was generated from one world config; another one would silently mix."""
    with open(path) as f:
        stored = json.load(f)
    want = dataclasses.asdict(world)  # fields added since the benchmark was written read as their defaults
    have = {**dataclasses.asdict(type(world)()), **{k: v for k, v in stored.get("config", {}).items() if k in want}}
    diff = [f"{k}: {have[k]!r} (stored) vs {want[k]!r} (config)" for k in want if have[k] != want[k]]
    if int(stored.get("seed", seed)) != seed:
        diff.insert(0, f"world_seed: {stored.get('seed')} (stored) vs {seed} (config)")
    if diff:
        raise ConfigError(f"{path}: the work directory's embedded benchmark was generated from another world "
                          f"config.data.world ({'; '.join(diff)}); use a fresh work directory")


class Benchmark:
    name: ClassVar[str] = ""
    sets: ClassVar[tuple[str, ...]] = ()
    ratios: ClassVar[tuple[int, ...]] = ()
    train_tasks: ClassVar[tuple[str, ...]] = ()     # what config.data.train_tasks may name
    stop_rules: ClassVar[tuple[str, ...]] = ("none",)  # what config.stages.unlearn.stop_rule may name (stop_score)
    # (set, metric, label, direction) of the report's headline table; direction down | keep | up
    headline: ClassVar[tuple[tuple[str, str, str, str], ...]] = ()
    all_metrics: ClassVar[tuple[str, ...]] = ()       # the report's per-set table
    plot_panels: ClassVar[tuple[tuple[str, str, float], ...]] = ()  # (metric, title, y max) per plotted panel
    chance: ClassVar[float] = 25.0                    # multiple-choice chance level (4 options), %
    relearn_metric: ClassVar[str] = ""                # the forget-set metric relearning and the floor score
    targets_legend: ClassVar[str] = ""                # what `judged_targets` checks, for the comparison

    @classmethod
    def judged_targets(cls, r: dict) -> list[tuple[str, float | None, list | None, str]]:
        """(name, value, its 95% interval, met | not met | undecided) of each target, judged by the interval
        (vkd_jax.eval.intervals.judge); none here."""
        return []

    def __init__(self, cfg, shared: str, local_cache: str | None = None):
        self.cfg = cfg
        self.dir = benchmark_dir(shared, local_cache)
        self.forget_pct = int(cfg.forget_ratio)
        if self.forget_pct not in self.ratios:
            raise ValueError(f"config.forget_ratio={cfg.forget_ratio}: {self.name} has forget ratios {self.ratios}")
        self.embedded = cfg.data.source == "embedded"
        self.manual_dir = os.path.join(self.dir, "raw") if self.embedded else cfg.data.manual_dir
        self.tfds_dir = cfg.data.tfds_dir or os.path.join(self.dir, "tfds")
        self.tokenizer = self.prepare()
        self.split = 0  # which forget split (with_split): 0 is the benchmark's own forget set
        self._built: dict = {}  # what this benchmark and split build once (`once`)

    def build_eval_sets(self) -> dict:
        """{set name: rows} this benchmark evaluates on (for the current split)."""
        raise NotImplementedError

    def once(self, key: str, build: Callable):
        """`build()`, built once per benchmark and split (the evaluation sets, a stopping rule's held-out rows)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def eval_sets(self) -> dict:
        """The evaluation sets: every evaluation, attack and floor reads them."""
        return self.once("eval_sets", self.build_eval_sets)

    @classmethod
    def needs_reference_model(cls, cfg) -> bool:
        """Whether this benchmark's evaluation under `cfg` compares with a model trained on the retain set only
        (CLEAR's official reading: Forget Quality)."""
        return False

    def stop_score(self, model, ecfg) -> float:
        """The forget-set score a stopping rule compares with the identity-free floor, on forget images no stage
        trains on (vkd_jax.stopping)."""
        raise NotImplementedError(f"{self.name}: no stopping rule")

    def add_reference_comparison(self, results: dict, reference_eval: dict) -> None:
        """Into `results`, what the evaluation compares with the retain-only reference model's (`reference_eval`),
        when `needs_reference_model`."""

    @classmethod
    def world_sizes(cls, cfg) -> tuple[int, int]:
        """(people who can be forgotten, others evaluated beside them) of the embedded world `cfg` generates:
        what the pipeline plan counts without generating it."""
        raise NotImplementedError

    def num_splits(self) -> int:
        """How many disjoint forget splits of the configured ratio the data holds (a download: its own one)."""
        return 1

    def with_split(self, k: int) -> Benchmark:
        """This benchmark with forget split k: another block of people unlearnt from the same vanilla model."""
        if not 0 <= k < self.num_splits():
            raise ConfigError(f"config.splits: forget split {k} does not exist: {self.name} "
                              f"({'the embedded world' if self.embedded else 'a local download'}) has "
                              f"{self.num_splits()} disjoint forget splits of {self.forget_pct}%")
        if k == 0:
            return self
        b = copy.copy(self)
        b.split, b._built = k, {}  # the split's own sets and rows
        return b

    def prepare(self):
        """Generate (embedded) or check (local) the data; return the tokenizer."""
        raise NotImplementedError

    def embedded_tokenizer(self, world, generate, tokenizer_texts):
        """The embedded world (data.source="embedded"): generated into manual_dir from `world` (its generator's
        config) once, a folder of another world refused; its tokenizer trained once on `tokenizer_texts(manual_dir)`
        and loaded."""
        from vkd_jax.data.tokenizer import load_tokenizer, train_tokenizer

        seed = int(self.cfg.data.world_seed)
        if not os.path.isfile(os.path.join(self.manual_dir, "world.json")):
            logging.info("generating the embedded %s in %s", self.name, self.manual_dir)
            generate(self.manual_dir, seed=seed, cfg=world)
        else:
            check_world(os.path.join(self.manual_dir, "world.json"), world, seed)
        tok_dir = os.path.join(self.dir, "tokenizer")
        if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
            train_tokenizer(tokenizer_texts(self.manual_dir), tok_dir)
        return load_tokenizer(tok_dir)

    def local_tokenizer(self, title: str):
        """A local download (data.source="local"): its folder must exist; the tokenizer is hf_dir's."""
        from vkd_jax.data.tokenizer import load_tokenizer

        if not self.manual_dir or not os.path.isdir(self.manual_dir):
            raise ConfigError(f"config.data.manual_dir={self.manual_dir!r}: the downloaded {title} folder is "
                              "needed (nothing is downloaded at run time)")
        if not self.cfg.hf_dir:
            raise ValueError(f"config.hf_dir: the HF LLaVA folder (weights + tokenizer) is needed for {title}")
        return load_tokenizer(self.cfg.hf_dir)

    def generic_images_dir(self) -> str:
        """config.data.generic_images, else the embedded world's generic_images/ (VKD's b_g images)."""
        from vkd_jax.benchmarks.worlds import GENERIC_DIR

        d = str(self.cfg.data.get("generic_images", "") or "")
        if d:
            return d
        if self.embedded:
            d = os.path.join(self.manual_dir, GENERIC_DIR)
            if not os.path.isdir(d):
                raise ConfigError(f"{d}: the embedded benchmark has no generic images; set the world's "
                                  "num_generic > 0 (with a fresh work directory)")
            return d
        raise ConfigError(f"config.vkd.b_g > 0 needs config.data.generic_images: a local folder of images outside "
                          f"every {self.name} split")

    def stage_streams(self, stage: str) -> dict[str, StreamSpec]:
        raise NotImplementedError

    @staticmethod
    def question_values(records: list[dict]) -> dict[str, list[tuple[str, float]]]:
        """{metric: [(person, value), ...]} of one set's records: each metric is the mean of its values, and its
        interval a bootstrap over the persons (vkd_jax.eval.intervals)."""
        raise NotImplementedError

    def evaluate(self, model, ecfg, records: dict) -> dict:
        raise NotImplementedError

    def relearn_keys(self) -> list:
        raise NotImplementedError

    def relearn_stream(self, keys) -> StreamSpec:
        raise NotImplementedError

    def relearn_score(self, model, ecfg, exclude, records: list) -> float:
        raise NotImplementedError

    def identity_free_floor(self, model, ecfg, records: list) -> float:
        raise NotImplementedError

    def probe_data(self):
        """vkd_jax.eval.probe.ProbeData: the forget and (the evaluated) retain people's training images to fit the
        identity probe on, and their held-out images to score it on."""
        raise NotImplementedError
