"""CLEAR behind the benchmark interface: a local download of therem/CLEAR (data.source="local", data.manual_dir) or
the embedded CLEAR (data.source="embedded": vkd_jax.benchmarks.clear.generator, generated into <benchmark>/raw).

Training rows become examples (`clear_examples`, LLaVA-1.5's chat prompt around each question):
  caption      an image row -> its caption, for a caption question of the official list (by the caption's hash)
  recognition  an image row -> the person's name ("What is the name of the person in the image?"); real_world rows
               -> their answer to their question
  name_mc      the name as multiple choice (the follow-up work's evaluation prompt); the options are resampled from
               the names of the stream's own rows each time (data.resample_options), answered with the letter or,
               with data.cls_answer="option", the name
  qa           a text-only (+tofu) row -> its answer
Streams: pretrain (embedded only): vqa = real_faces_train + real_faces + real_world; vanilla: vqa = full, qa =
full+tofu's text rows (plus the pretraining rows `data.celebrity_repeat` times); reference: the retain split's;
masks / unlearn: forget = forget{NN}, retain = retain{NN} (captions as targets, as the follow-up work unlearns on
CLEAR), generic; caption (pretrain..reference): the generic images. Relearning: name MC on a fraction of
forget{NN}_perturbed's rows, scored on the others.
"""

from __future__ import annotations

import os

import numpy as np

from vkd_jax.benchmarks.base import Benchmark, StreamSpec
from vkd_jax.benchmarks.clear.prompts import CAPTION_QUESTIONS, NAME_QUESTION, TRAIN_TASKS, clear_examples
from vkd_jax.data.sources import pair_examples

VQA, QA = ("Image_Textual",), ("Pure_Text",)



class ConcatRows:
    def __init__(self, parts):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self.parts[k][i - int(self.starts[k])]


class ClearBench(Benchmark):
    name = "clear"
    sets = ("forget", "retain", "real_faces", "real_world")
    ratios = (1, 5, 10)
    train_tasks = TRAIN_TASKS
    headline = (("forget", "vqa_acc", "Forget VQA", "down"), ("forget", "qa_rougeL", "Forget QA ROUGE-L", "keep"),
                ("retain", "vqa_acc", "Retain VQA", "up"), ("retain", "qa_rougeL", "Retain QA ROUGE-L", "up"),
                ("real_faces", "vqa_acc", "Real faces", "up"), ("real_world", "vqa_acc", "Real world", "up"))
    all_metrics = ("vqa_acc", "qa_rougeL", "qa_rouge1", "qa_bleu")
    plot_panels = (("vqa_acc", "name recognition accuracy (image)", 105.0), ("qa_rougeL", "text QA ROUGE-L", 1.05))
    relearn_metric = "vqa_acc"

    @staticmethod
    def question_values(records):
        from vkd_jax.benchmarks.clear.protocol import followup_values

        return followup_values(records)

    def prepare(self):
        from vkd_jax.benchmarks.clear import generator
        from vkd_jax.benchmarks.worlds import prompt_texts

        def texts(manual_dir):  # its own text, its prompts' words, and MLLMU-Bench's (as the shipped model's tokenizer)
            return (generator.benchmark_texts(manual_dir) + list(CAPTION_QUESTIONS)
                    + [NAME_QUESTION, "USER: ASSISTANT: A. B. C. D."] + prompt_texts())

        if self.embedded:
            return self.embedded_tokenizer(generator.ClearWorldConfig(**self.cfg.data.clear_world.to_dict()),
                                           generator.generate, texts)
        return self.local_tokenizer("CLEAR")

    @property
    def tokenizer_dir(self) -> str:
        return self.cfg.hf_dir or os.path.join(self.dir, "tokenizer")

    def load(self, config: str):
        """A CLEAR config; for forget split k > 0, the forget / retain configs hold that split's people."""
        from vkd_jax.benchmarks.clear import reader as clear

        if self.split:
            rows = self._split_config(config)
            if rows is not None:
                return rows
        return clear.load(config, self.tfds_dir, self.manual_dir)

    def _world_people(self) -> list[str]:
        import json

        with open(os.path.join(self.manual_dir, "world.json")) as f:
            return [p["name"] for p in json.load(f)["people"] if not p["celebrity"]]

    @classmethod
    def needs_reference_model(cls, cfg) -> bool:
        return cfg.eval.clear_reading == "official"

    def add_reference_comparison(self, results: dict, reference_eval: dict) -> None:
        """Forget Quality of the vanilla and the unlearned model: the KS test of their forget truth ratios against
        the retain-only reference model's (protocol.forget_quality), into each model's official.eval_log_forget."""
        from vkd_jax.benchmarks.clear.protocol import forget_quality

        ref = reference_eval.get("official", {}).get("eval_log_forget", {}).get("truth_ratios")
        results["reference"] = reference_eval
        for model in ("vanilla", "unlearned"):
            m = results[model].get("official", {}).get("eval_log_forget")
            if m is not None and ref:
                m["forget_quality"] = forget_quality(np.asarray(m["truth_ratios"]), np.asarray(ref))

    @classmethod
    def world_sizes(cls, cfg) -> tuple[int, int]:
        from vkd_jax.benchmarks.clear.generator import ClearWorldConfig

        w = ClearWorldConfig(**cfg.data.clear_world.to_dict())
        return w.num_people, w.num_real_faces

    def num_splits(self) -> int:
        from vkd_jax.benchmarks.worlds import split_size

        if not self.embedded:
            return 1
        n = len(self._world_people())
        return n // split_size(n, self.forget_pct)

    def split_forget_names(self) -> set[str]:
        """The people of this forget split: block `split` of the embedded world's forget order (block 0 is
        forget{NN} itself)."""
        from vkd_jax.benchmarks.worlds import forget_order, split_size

        people = self._world_people()
        order, size = forget_order(int(self.cfg.data.world_seed), len(people)), split_size(len(people),
                                                                                           self.forget_pct)
        return {people[i] for i in order[self.split * size:(self.split + 1) * size]}

    def _split_config(self, config: str):
        """forget{NN}, retain{NN} (+tofu, _perturbed) and retain_perturbed of split k, as views of the stored
        configs that hold everyone (full, full+tofu, and the two perturbed configs together)."""
        from vkd_jax.benchmarks.clear import reader as clear
        from vkd_jax.data.sources import ConcatSource

        names = self.split_forget_names()
        fn, rn = self.forget_name, self.retain_name

        def where(rows, keep):
            return clear.Rows(rows.source, [rows.indices[i] for i in range(len(rows)) if keep(rows[i])])

        def forgotten(r):  # an image row shows the person; a text row names them in its question
            return r.get("name") in names or any(n in (r.get("question") or "") for n in names)

        load = lambda c: clear.load(c, self.tfds_dir, self.manual_dir)  # noqa: E731
        if config in (fn, rn):
            return where(load("full"), forgotten if config == fn else lambda r: not forgotten(r))
        if config in (f"{fn}+tofu", f"{rn}+tofu"):
            return where(load("full+tofu"), forgotten if config == f"{fn}+tofu" else lambda r: not forgotten(r))
        if config in (f"{fn}_perturbed", "retain_perturbed"):
            a, b = load(f"forget{max(self.ratios):02d}_perturbed"), load("retain_perturbed")  # everyone, together
            both = clear.Rows(ConcatSource([a.source, b.source]), list(a.indices) + [len(a.source) + j for j in
                                                                                     b.indices])
            return where(both, forgotten if config == f"{fn}_perturbed" else lambda r: not forgotten(r))
        return None

    @property
    def forget_name(self) -> str:
        return f"forget{self.forget_pct:02d}"

    @property
    def retain_name(self) -> str:
        return f"retain{100 - self.forget_pct}"

    def _text_rows(self, config: str):
        from vkd_jax.benchmarks.clear.reader import Rows

        rows = self.load(config)
        return Rows(rows.source, [rows.indices[i] for i in range(len(rows)) if not (rows[i].get("image") or {})
                                  .get("bytes")])

    def _pretrain_rows(self):
        parts = [self.load("real_faces"), self.load("real_world")]
        if self.embedded:
            parts.insert(0, self.load("real_faces_train"))
        return ConcatRows(parts)

    # ---- training streams --------------------------------------------------------------------------------
    def stage_streams(self, stage: str) -> dict[str, StreamSpec]:
        from vkd_jax.data.sources import ImageFolderSource

        data = self.cfg.data
        tasks = tuple(t for t in data.train_tasks if t in TRAIN_TASKS) or ("caption",)
        resample = bool(data.get("resample_options", False))
        spec = lambda src, t, types: StreamSpec(src, t, types, examples=clear_examples,  # noqa: E731
                                                resample_options=resample)
        if stage in ("pretrain", "vanilla", "reference"):
            pre = self._pretrain_rows()
            if stage == "pretrain":
                out = {"vqa": spec(pre, tasks, VQA)}
            else:
                images = self.load("full" if stage == "vanilla" else self.retain_name)
                text = self._text_rows("full+tofu" if stage == "vanilla" else f"{self.retain_name}+tofu")
                out = {"vqa": spec(ConcatRows([images] + [pre] * int(data.get("celebrity_repeat", 1))), tasks, VQA),
                       "qa": spec(text, ("qa",), QA)}
            if "caption" in tuple(self.cfg.stages[stage].get("streams", ())):
                cap = ImageFolderSource(self.generic_images_dir())
                out["caption"] = StreamSpec(cap, ("ft",), VQA, pair_examples)
            return out
        if stage in ("masks", "unlearn"):
            out = {"forget": spec(self.load(self.forget_name), ("caption",), VQA),
                   "retain": spec(self.load(self.retain_name), ("caption",), VQA)}
            if stage == "unlearn":
                out["generic"] = lambda: StreamSpec(ImageFolderSource(self.generic_images_dir()), ("ft",), VQA,
                                                    pair_examples)
            return out
        raise ValueError(f"no streams for stage {stage!r}")

    # ---- evaluation --------------------------------------------------------------------------------------
    def build_eval_sets(self) -> dict:
        from vkd_jax.benchmarks.clear.reader import Rows, retain_perturbed_for

        retain_rows = self.load(self.retain_name)
        retain_pert = retain_perturbed_for(self.load("retain_perturbed"), retain_rows)
        retain_text = self._text_rows(f"{self.retain_name}+tofu")
        n = int(self.cfg.eval.get("retain_max_profiles", 0) or 0)
        if n:  # a fixed, seeded subset of the retain people keeps evaluation fast
            people = sorted({retain_pert[i]["name"] for i in range(len(retain_pert))})
            keep = {people[i] for i in np.random.default_rng(int(self.cfg.seed) + 99).permutation(len(people))[:n]}
            retain_pert = Rows(retain_pert.source, [retain_pert.indices[i] for i in range(len(retain_pert))
                                                    if retain_pert[i]["name"] in keep])
            retain_text = Rows(retain_text.source, [retain_text.indices[i] for i in range(len(retain_text))
                                                    if any(p in retain_text[i]["question"] for p in keep)])
        return {"forget": (self.load(f"{self.forget_name}_perturbed"), self._text_rows(f"{self.forget_name}+tofu")),
                "retain": (retain_pert, retain_text), "retain_all": self.load("retain_perturbed"),
                "real_faces": self.load("real_faces"), "real_world": self.load("real_world")}

    def evaluate(self, model, ecfg, records: dict) -> dict:
        from vkd_jax.benchmarks.clear import protocol as ev
        from vkd_jax.eval.runner import Runner

        runner = Runner(model, self.tokenizer, ecfg)
        sets = self.eval_sets()
        recs = ev.followup_records(runner, {k: sets[k] for k in self.sets}, ecfg.seed, ecfg.max_questions)
        out = {name: ev.followup_metrics(r, intervals=True) for name, r in recs.items()}
        for name, r in recs.items():
            records.setdefault(name, []).extend(r)
        if self.needs_reference_model(self.cfg):
            ccfg = ev.ClearEvalConfig(base=ecfg, reading="official",
                                      official_rows=int(self.cfg.eval.clear_official_rows),
                                      official_max_new_tokens=int(self.cfg.eval.clear_official_max_new_tokens))
            off = ev.official_records(runner, sets, ccfg, ecfg.seed)
            for task, r in off.items():
                records.setdefault(task, []).extend(r)
            out["official"] = ev.official_metrics(off)
        return out

    # ---- relearning attack and floor ---------------------------------------------------------------------
    def relearn_keys(self) -> list:
        rows = self.load(f"{self.forget_name}_perturbed")
        return [(rows[i]["name"], i) for i in range(len(rows))]

    def relearn_stream(self, keys) -> StreamSpec:
        from vkd_jax.benchmarks.clear.reader import Rows

        rows = self.load(f"{self.forget_name}_perturbed")
        return StreamSpec(Rows(rows.source, [rows.indices[i] for _, i in keys]), ("name_mc",), VQA,
                          examples=clear_examples)

    def relearn_score(self, model, ecfg, exclude, records: list) -> float:
        from vkd_jax.benchmarks.clear import protocol as ev
        from vkd_jax.benchmarks.clear.reader import Rows
        from vkd_jax.eval.runner import Runner

        rows = self.load(f"{self.forget_name}_perturbed")
        used = {i for _, i in exclude}
        held = Rows(rows.source, [rows.indices[i] for i in range(len(rows)) if i not in used])
        recs = ev.followup_records(Runner(model, self.tokenizer, ecfg), {"forget": (held, [])}, ecfg.seed)["forget"]
        records.extend(recs)
        return ev.followup_metrics(recs)["vqa_acc"]

    def probe_data(self, max_retain: int = 40):
        from vkd_jax.eval.probe import ProbeData

        sets = self.eval_sets()
        forget_pert, retain_pert = sets["forget"][0], sets["retain"][0]
        forget = {forget_pert[i]["name"] for i in range(len(forget_pert))}
        retain = set(sorted({retain_pert[i]["name"] for i in range(len(retain_pert))})[:max_retain])
        label = {n: k for k, n in enumerate(sorted(forget | retain))}
        full = self.load("full")
        train = [(full, j, None, label[full[j]["name"]]) for j in range(len(full)) if full[j]["name"] in label]
        forget_test = [(forget_pert, i, None, label[forget_pert[i]["name"]]) for i in range(len(forget_pert))]
        retain_test = [(retain_pert, i, None, label[retain_pert[i]["name"]]) for i in range(len(retain_pert))
                       if retain_pert[i]["name"] in label]
        return ProbeData(train, forget_test, retain_test, len(label))

    def identity_free_floor(self, model, ecfg, records: list) -> float:
        from vkd_jax.benchmarks.clear import protocol as ev
        from vkd_jax.data.sources import ImageReplacedSource, mean_image_bytes
        from vkd_jax.eval.runner import Runner

        pert = self.load(f"{self.forget_name}_perturbed")
        blank = ImageReplacedSource(pert, mean_image_bytes(self.load("full")))
        recs = ev.followup_records(Runner(model, self.tokenizer, ecfg), {"forget": (blank, [])}, ecfg.seed)["forget"]
        records.extend(recs)
        return ev.followup_metrics(recs)["vqa_acc"]
