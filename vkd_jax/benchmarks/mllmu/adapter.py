"""MLLMU-Bench behind the benchmark interface: a local download (data.source="local", data.manual_dir) or the
embedded world (data.source="embedded": vkd_jax.benchmarks.mllmu.generator, generated into <benchmark>/raw with
its tokenizer).

Streams (every stage; the config picks which one a stage reads):
  pretrain             vqa / qa: the celebrities (Retain_Set), standing in for LLaVA's own pretraining
  vanilla, reference   vqa / qa: every ft_Data pose of every profile (reference: the retain split) with all its
                       question forms, plus the celebrities `data.celebrity_repeat` times
  pretrain..reference  caption: the generic images with their captions.json (data.generic_images or the world's)
  masks, unlearn       forget / retain: the forget / retain people's ft_Data pairs with their images;
                       unlearn also generic (the generic images, VKD's b_g)
Evaluation: vkd_jax.benchmarks.mllmu.protocol on forget_X, Test_Set (forget IDs), retain_(100-X) (optionally a
seeded subset of `eval.retain_max_profiles` profiles) and Retain_Set; relearning on the forget VQA classification
questions.
"""

from __future__ import annotations

import os

import numpy as np

from vkd_jax.benchmarks.base import Benchmark, StreamSpec
from vkd_jax.benchmarks.mllmu.prompts import TASKS, profile_examples
from vkd_jax.data.sources import pair_examples
from vkd_jax.errors import ConfigError

VQA, QA = ("Image_Textual",), ("Pure_Text",)


class MLLMUBench(Benchmark):
    name = "mllmu"
    sets = ("forget", "test", "retain", "celebrity")
    ratios = (5, 10, 15)
    train_tasks = TASKS
    stop_rules = ("none", "floor")
    headline = (("forget", "vqa_cls_acc", "Forget VQA", "down"), ("forget", "qa_cls_acc", "Forget QA", "keep"),
                ("test", "vqa_cls_acc", "Test VQA", "down"), ("retain", "vqa_cls_acc", "Retain VQA", "up"),
                ("retain", "qa_cls_acc", "Retain QA", "up"), ("celebrity", "vqa_cls_acc", "Celeb VQA", "up"),
                ("celebrity", "qa_cls_acc", "Celeb QA", "up"))
    all_metrics = ("vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL", "qa_gen_rougeL")
    relearn_metric = "vqa_cls_acc"
    plot_panels = (("vqa_cls_acc", "classification accuracy, VQA (image)", 105.0),
                   ("qa_cls_acc", "classification accuracy, QA (text)", 105.0))

    targets_legend = ("Forget VQA within 5 of the identity-free floor and at least chance - 5; Test VQA <= 30; "
                      "Retain and Celeb VQA within 3 points of vanilla; Forget QA equal to vanilla's; AG <= 5 at "
                      "each relearning fraction; the probe's accuracy on the forget people at least halfway from "
                      "vanilla to chance, on the retain people within 5 of vanilla.")

    @classmethod
    def judged_targets(cls, r: dict) -> list[tuple[str, float | None, list | None, str]]:
        from vkd_jax.eval.intervals import judge

        def get(model, s, m):
            return ((r.get(model) or {}).get(s) or {}).get(m)

        out = []
        floor = (r.get("floors") or {}).get("identity_free_forget_vqa_cls_acc")
        fv, fci = get("unlearned", "forget", "vqa_cls_acc"), get("unlearned", "forget", "vqa_cls_acc_ci95")
        if floor is not None:
            out.append((f"forget VQA within 5 of the floor ({floor:.1f}) and >= chance - 5", fv, fci,
                        judge(fci, max(floor - 5, cls.chance - 5), floor + 5)))
        out.append(("test VQA <= 30", get("unlearned", "test", "vqa_cls_acc"),
                    get("unlearned", "test", "vqa_cls_acc_ci95"),
                    judge(get("unlearned", "test", "vqa_cls_acc_ci95"), None, 30)))
        for s, label in (("retain", "retain VQA change >= -3"), ("celebrity", "celeb VQA change >= -3")):
            ci = get("change", s, "vqa_cls_acc_ci95")
            out.append((label, get("change", s, "vqa_cls_acc"), ci, judge(ci, -3, None)))
        # text knowledge kept exactly: every forget QA answer as vanilla's, a fact about these questions
        ch = get("change", "forget", "qa_cls_acc")
        out.append(("forget QA change = 0", ch, get("change", "forget", "qa_cls_acc_ci95"),
                    "undecided" if ch is None else "met" if ch == 0 else "not met"))
        rl = r.get("relearn") or {}
        for f, g, ci in zip(rl.get("fractions", []), rl.get("ag", []), rl.get("ag_ci95") or []):
            out.append((f"AG@{f:g} <= 5", g, ci, judge(ci, None, 5)))
        probe = r.get("probe") or {}
        pv, pu = probe.get("vanilla") or {}, probe.get("unlearned") or {}
        if pv.get("chance") is not None and "forget_acc" in pv and "forget_acc" in pu:
            # the representation: identity still readable from the features (vkd_jax.eval.probe)
            half = pv["forget_acc"] - (pv["forget_acc"] - pv["chance"]) / 2
            out.append((f"probe forget people <= halfway from vanilla to chance ({half:.1f})", pu["forget_acc"],
                        pu.get("forget_acc_ci95"), judge(pu.get("forget_acc_ci95"), None, half)))
            if "retain_acc" in pv and "retain_acc" in pu:
                out.append((f"probe retain people within 5 of vanilla ({pv['retain_acc']:.1f})", pu["retain_acc"],
                            pu.get("retain_acc_ci95"),
                            judge(pu.get("retain_acc_ci95"), pv["retain_acc"] - 5, pv["retain_acc"] + 5)))
        return out

    def prepare(self):
        from vkd_jax.benchmarks.mllmu import generator

        if self.embedded:
            return self.embedded_tokenizer(generator.WorldConfig(**self.cfg.data.world.to_dict()), generator.generate,
                                           generator.tokenizer_texts)
        return self.local_tokenizer("MLLMU-Bench")

    @property
    def tokenizer_dir(self) -> str:
        return self.cfg.hf_dir or os.path.join(self.dir, "tokenizer")

    def load(self, config: str):
        """An MLLMU-Bench config; for forget split k > 0, forget_X / retain_Y are that split's profiles."""
        from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
        from vkd_jax.data.sources import RowsWithIds

        if self.split and config in (f"forget_{self.forget_pct}", f"retain_{100 - self.forget_pct}"):
            return RowsWithIds(self.load("Full_Set"), self.split_forget_ids(), exclude=config.startswith("retain"))
        return mllmu_bench.load(config, self.tfds_dir, self.manual_dir)

    def _split_blocks(self) -> tuple[list[str], int]:
        from vkd_jax.benchmarks.worlds import forget_order, split_size
        from vkd_jax.data.pipeline import as_str

        full = self.load("Full_Set")
        ids = [as_str(full[i]["ID"]) for i in range(len(full))]
        return [ids[i] for i in forget_order(int(self.cfg.data.world_seed), len(ids))], \
            split_size(len(ids), self.forget_pct)

    @classmethod
    def world_sizes(cls, cfg) -> tuple[int, int]:
        from vkd_jax.benchmarks.mllmu.generator import WorldConfig

        w = WorldConfig(**cfg.data.world.to_dict())
        return w.num_people, w.num_celebrities

    def num_splits(self) -> int:
        if not self.embedded:
            return 1
        order, size = self._split_blocks()
        return len(order) // size

    def split_forget_ids(self) -> list[str]:
        """The profile IDs of this forget split: block `split` of the embedded world's forget order (block 0 is
        forget_X itself)."""
        order, size = self._split_blocks()
        return order[self.split * size:(self.split + 1) * size]

    @staticmethod
    def question_values(records):
        from vkd_jax.benchmarks.mllmu.protocol import question_values

        return question_values(records)

    # ---- training streams --------------------------------------------------------------------------------
    def stage_streams(self, stage: str) -> dict[str, StreamSpec]:
        from vkd_jax.data.sources import ConcatSource, ImageFolderSource, PoseJoinedSource

        data = self.cfg.data
        tasks = tuple(data.train_tasks)
        resample = bool(data.get("resample_options", False))
        retain = f"retain_{100 - self.forget_pct}"
        out = {}
        if stage in ("pretrain", "vanilla", "reference"):
            if stage == "pretrain":
                src = self.load("Retain_Set")
            else:
                profiles = self.load("Full_Set" if stage == "vanilla" else retain)
                celebs = [self.load("Retain_Set")] * int(data.get("celebrity_repeat", 1))
                src = ConcatSource([PoseJoinedSource(self.load("ft_Data"), profiles), *celebs])
            out = {"vqa": StreamSpec(src, tasks, VQA, profile_examples, resample_options=resample),
                   "qa": StreamSpec(src, tasks, QA, profile_examples, resample_options=resample)}
            if "caption" in tuple(self.cfg.stages[stage].get("streams", ())):
                cap = ImageFolderSource(self.generic_images_dir())
                if cap.captions is None:
                    raise ConfigError(f"stages.{stage}.streams has 'caption': {cap.folder} needs a captions.json")
                out["caption"] = StreamSpec(cap, ("ft",), VQA, pair_examples, resample_options=resample)
            return out
        if stage in ("masks", "unlearn"):
            forget = self.forget_poses()
            ft = forget.ft
            if self.cfg.stages.unlearn.stop_rule != "none":  # the held-out pose: what the rule scores
                forget = forget.last_pose(held_out=False)
            out = {"forget": StreamSpec(forget, ("ft",), VQA, profile_examples, resample_options=resample),
                   "retain": StreamSpec(PoseJoinedSource(ft, self.load(retain)), ("ft",), VQA, profile_examples,
                                        resample_options=resample)}
            if stage == "unlearn":
                out["generic"] = lambda: StreamSpec(ImageFolderSource(self.generic_images_dir()), ("ft",), VQA,
                                                    pair_examples, resample_options=resample)
            return out
        raise ValueError(f"no streams for stage {stage!r}")

    # ---- evaluation --------------------------------------------------------------------------------------
    def build_eval_sets(self) -> dict:
        from vkd_jax.benchmarks.mllmu.protocol import EvalSet
        from vkd_jax.data.pipeline import forget_ids

        forget = self.load(f"forget_{self.forget_pct}")
        sets = {"forget": EvalSet(forget), "test": EvalSet(self.load("Test_Set"), forget_ids(forget)),
                "retain": EvalSet(self.load(f"retain_{100 - self.forget_pct}")),
                "celebrity": EvalSet(self.load("Retain_Set"))}
        n = int(self.cfg.eval.get("retain_max_profiles", 0) or 0)
        if n:  # the retain split is large; a fixed, seeded subset of its profiles keeps evaluation fast
            src = sets["retain"].source
            ids = sorted(forget_ids(src))
            pick = np.random.default_rng(int(self.cfg.seed) + 99).permutation(len(ids))[:n]
            sets["retain"] = EvalSet(src, tuple(sorted(ids[i] for i in pick)))
        return sets

    def evaluate(self, model, ecfg, records: dict) -> dict:
        from vkd_jax.benchmarks.mllmu.protocol import evaluate

        return evaluate(model, self.tokenizer, self.eval_sets(), ecfg, records=records,
                        demo_source=self.load("Full_Set") if ecfg.few_shot else None)

    # ---- relearning attack and floor ---------------------------------------------------------------------
    def forget_poses(self):
        """The forget people's ft_Data rows (each pose with its person's questions)."""
        from vkd_jax.data.sources import PoseJoinedSource

        return PoseJoinedSource(self.load("ft_Data"), self.load(f"forget_{self.forget_pct}"))

    def stop_score(self, model, ecfg) -> float:
        """Forget VQA accuracy (multiple choice) on each forget person's held-out pose, which unlearning does not
        train on under a stopping rule (vkd_jax.stopping)."""
        from vkd_jax.benchmarks.mllmu.protocol import evaluate_questions

        held_out = self.once("held_out_poses", lambda: self.forget_poses().last_pose(held_out=True))
        return evaluate_questions(model, self.tokenizer, held_out, ecfg, set_name="forget_held_out")["vqa_cls_acc"]

    def relearn_keys(self) -> list:
        from vkd_jax.benchmarks.mllmu.protocol import question_keys

        return sorted(question_keys(self.load(f"forget_{self.forget_pct}"), "classification", "Image_Textual"))

    def relearn_stream(self, keys) -> StreamSpec:
        return StreamSpec(self.load(f"forget_{self.forget_pct}"), ("classification",), VQA, profile_examples,
                          keys=tuple(keys))

    def relearn_score(self, model, ecfg, exclude, records: list) -> float:
        from vkd_jax.benchmarks.mllmu.protocol import evaluate_questions

        return evaluate_questions(model, self.tokenizer, self.load(f"forget_{self.forget_pct}"), ecfg,
                                  exclude=exclude, records=records)["vqa_cls_acc"]

    def probe_data(self, max_retain: int = 40):
        from vkd_jax.data.pipeline import as_str
        from vkd_jax.eval.probe import ProbeData

        sets = self.eval_sets()
        forget = {as_str(sets["forget"].source[i]["ID"]) for i in range(len(sets["forget"].source))}
        retain_src = sets["retain"].source
        retain = sorted(sets["retain"].ids or [as_str(retain_src[i]["ID"]) for i in range(len(retain_src))])
        retain = set(retain[:max_retain])
        label = {pid: k for k, pid in enumerate(sorted(forget | retain))}
        ft = self.load("ft_Data")
        train = [(ft, j, None, label[as_str(ft[j]["ID"])]) for j in range(len(ft)) if as_str(ft[j]["ID"]) in label]
        test = self.load("Test_Set")
        tests = {"forget": [], "retain": []}
        for r in range(len(test)):
            pid = as_str(test[r]["ID"])
            if pid in label:
                for pose in range(len(test[r]["images"]["bytes"])):
                    tests["forget" if pid in forget else "retain"].append((test, r, pose, label[pid]))
        return ProbeData(train, tests["forget"], tests["retain"], len(label))

    def identity_free_floor(self, model, ecfg, records: list) -> float:
        """Forget VQA accuracy of a model shown the mean image instead of the person."""
        from vkd_jax.benchmarks.mllmu.protocol import evaluate_questions
        from vkd_jax.data.sources import ImageReplacedSource, mean_image_bytes

        forget = self.load(f"forget_{self.forget_pct}")
        blank = ImageReplacedSource(forget, mean_image_bytes(self.load("Full_Set")))
        return evaluate_questions(model, self.tokenizer, blank, ecfg, records=records)["vqa_cls_acc"]
