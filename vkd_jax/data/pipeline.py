"""Input pipeline: grain over a random-access source (a `tfds.data_source` of a benchmark, or a view of one) ->
padded numpy batches with static shapes.

Rows are flattened into examples by the benchmark's own example builder (`examples`: tasks, and types
`Image_Textual` = VQA with the image, `Pure_Text` = QA without; its prompts are the same code its evaluation uses)
and tokenized once up front (`vkd_jax.data.chat`). Grain then shuffles example indices (seeded, reshuffled every
epoch), groups them into GLOBAL batches, and each process materialises only its contiguous slice of every global
batch (process_index / process_count), so the processes' slices are disjoint, cover the global batch, and the padded
length (the smallest length bucket that fits the whole global batch) is the same on every host. Images are decoded
and preprocessed (`vkd_jax.preprocess`) inside the grain map, run by grain's prefetch threads.

Batch (local, B = global_batch_size // process_count, T = padded length):
    input_ids [B,T] int32, attention_mask [B,T] int32, positions [B,T] int32 (0-based over real tokens),
    labels [B,T] int32 (HF convention, NOT shifted: logits[:, t] predicts labels[:, t+1]; = input_ids on answer
    tokens + EOS, pad_id elsewhere), loss_mask [B,T] float32 (1 where labels count),
    pixel_values [B,3,H,W] float32 (only when the selection has VQA examples; zeros for text rows), has_image [B] bool,
    valid [B] bool (False for the padding rows of a final partial batch),
    metadata: id, task, type, question, answer, correct_letter, ground_truth ([B] numpy str), row, item [B] int32.
Deterministic for a seed; `get_state()` / `set_state()` resume at exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from vkd_jax.data import chat
from vkd_jax.errors import ConfigError, DataError
from vkd_jax.preprocess import ImageProcessorConfig, preprocess_one

TYPES = ("Image_Textual", "Pure_Text")
CLS_ANSWERS = ("letter", "option")
_META_STR = ("id", "task", "type", "question", "answer", "correct_letter", "ground_truth")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    tasks: tuple[str, ...] = ("classification",)
    types: tuple[str, ...] = TYPES
    train: bool = True                    # append answer + EOS and answer-only labels; False: prompts only
    global_batch_size: int = 8
    max_len: int | None = None            # fixed padded length (one bucket); else the smallest of length_buckets
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)
    padding_side: str = "right"           # "left" for generation prompts
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1            # None: repeat forever
    drop_remainder: bool = True           # False: the last partial global batch is padded with valid=False rows
    image_seq_length: int = 576
    image: ImageProcessorConfig = ImageProcessorConfig()
    num_threads: int = 2
    prefetch: int = 4
    process_index: int = 0
    process_count: int = 1
    ids: tuple[str, ...] | None = None    # restrict to these profile IDs (e.g. Test_Set forget IDs)
    keys: tuple[tuple[str, int], ...] | None = None  # restrict to these (ID, item) questions (relearning subsets)
    # Training on multiple-choice items: draw fresh distractors (from the values the same question offers across
    # profiles) and a fresh order each time an item is served, so that an option set never identifies the person
    # and the answer must come from the image or the name (the embedded world trains on its own MC items).
    resample_options: bool = False
    # What a multiple-choice item is trained to answer: "letter" (the benchmark's answer) or "option" (the correct
    # option's text). A tiny model trained from scratch does not learn to bind a letter to the option it knows
    # (measured: letter accuracy at chance with cloze near 100%); with "option" it answers with the value, and the
    # evaluator scores the options by likelihood (EvalConfig.cls_scoring="likelihood").
    cls_answer: str = "letter"

    def __post_init__(self):
        bad = set(self.types) - set(TYPES)
        if bad:
            raise ValueError(f"PipelineConfig: unknown types {sorted(bad)}; types {TYPES}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"PipelineConfig.padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.cls_answer not in CLS_ANSWERS:
            raise ValueError(f"PipelineConfig.cls_answer must be one of {CLS_ANSWERS}, got {self.cls_answer!r}")
        if self.global_batch_size % self.process_count:
            raise ConfigError(f"PipelineConfig.global_batch_size={self.global_batch_size} is not divisible by "
                              f"process_count={self.process_count}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"PipelineConfig.process_index={self.process_index} not in [0, {self.process_count})")


def as_str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


class InputPipeline:
    """Iterable of batches for one process. `state = p.get_state()`; later `p.set_state(state)` continues with
    exactly the batch that would have come next (call before or after starting iteration)."""

    def __init__(self, source, tokenizer, cfg: PipelineConfig, examples):
        """examples(row, tasks, types, cls_answer) -> the row's examples (prompt text, answer, metadata): the
        benchmark's own (vkd_jax.benchmarks.<name>.prompts), or `sources.pair_examples` for Q/A-pair rows. A
        multiple-choice example carries `options` and `mc_prompt(question, options)`, with which
        `resample_options` rebuilds its prompt."""
        self.source, self.tok, self.cfg = source, tokenizer, cfg
        make_examples = examples
        if tokenizer.image_token_id is None:
            raise ValueError("tokenizer has no image token")
        ids = set(cfg.ids) if cfg.ids is not None else None
        keys = {(str(i), int(k)) for i, k in cfg.keys} if cfg.keys is not None else None
        self.examples: list[dict] = []
        for row in range(len(source)):
            rec = source[row]
            if ids is not None and as_str(rec["ID"]) not in ids:
                continue
            for ex in make_examples(rec, cfg.tasks, cfg.types, cfg.cls_answer):
                if keys is not None and (ex["id"], ex["item"]) not in keys:
                    continue
                t = chat.tokenize(tokenizer, ex["prompt"], ex["answer"] if cfg.train else None,
                                     cfg.image_seq_length)
                ex.update(row=row, input_ids=t.input_ids, loss_mask=t.loss_mask)
                self.examples.append(ex)
        if not self.examples:
            raise ConfigError(f"no examples for tasks={cfg.tasks} types={cfg.types} ids={cfg.ids} "
                              f"in a source of {len(source)} profiles")
        self._option_pool = {}
        if cfg.resample_options and cfg.train:
            for e in self.examples:
                if "options" in e:
                    self._option_pool.setdefault((e["type"], e["item"]), set()).update(e["options"].values())
            self._option_pool = {k: sorted(v) for k, v in self._option_pool.items()}
        self.lengths = np.asarray([len(e["input_ids"]) for e in self.examples])
        if self._option_pool:  # resampled options may tokenize longer: reserve room for the longest four
            longest = max(len(tokenizer.encode(" " + v, add_bos=False)) for p in self._option_pool.values()
                          for v in p)
            self.lengths = self.lengths + np.asarray([4 * longest if "options" in e else 0 for e in self.examples])
        self.with_images = any(e["type"] == "Image_Textual" for e in self.examples)
        self.local_batch_size = cfg.global_batch_size // cfg.process_count
        self._ds = self._build()
        self._it = None
        self._pending_state = None

    # ------------------------------------------------------------------ structure
    def _build(self):
        cfg, n, gb = self.cfg, len(self.examples), self.cfg.global_batch_size
        idx = grain.MapDataset.range(n)
        if cfg.shuffle:
            idx = idx.shuffle(seed=cfg.seed)  # reshuffled per epoch after repeat
        if cfg.num_epochs != 1:
            idx = idx.repeat(cfg.num_epochs)
        total = len(idx)
        if total < sys.maxsize:  # finite: whole global batches, last one padded with -1 (invalid) rows
            if cfg.drop_remainder:
                total = total // gb * gb
            else:
                total_pad, base = math.ceil(total / gb) * gb, idx
                idx = grain.MapDataset.range(total_pad).map(lambda i: base[i] if i < total else -1)
            idx = idx[:total] if cfg.drop_remainder else idx
        self.num_batches = total // gb if cfg.drop_remainder else math.ceil(total / gb)
        lo = cfg.process_index * self.local_batch_size
        return idx.batch(gb, drop_remainder=True).map_with_index(
            lambda k, g: self._load_batch(np.asarray(g), np.asarray(g)[lo:lo + self.local_batch_size], k))

    def _pad_len(self, global_idx: np.ndarray) -> int:
        real = global_idx[global_idx >= 0]
        need = int(self.lengths[real].max()) if len(real) else 1
        if self.cfg.max_len is not None:
            buckets = (self.cfg.max_len,)
        else:
            buckets = self.cfg.length_buckets
        for b in sorted(buckets):
            if need <= b:
                return b
        worst = int(real[np.argmax(self.lengths[real])])
        raise ConfigError(f"example {self.examples[worst]['id']} ({self.examples[worst]['task']}, item "
                          f"{self.examples[worst]['item']}) has {need} tokens, longer than the largest length "
                          f"bucket {max(buckets)}; raise PipelineConfig.max_len / length_buckets")

    def _image(self, ex) -> np.ndarray:
        rec = self.source[ex["row"]]
        imgs = rec.get("images")
        if imgs is not None and len(imgs["bytes"]):  # Test_Set: one pose per profile, fixed by the seed
            k = np.random.default_rng([self.cfg.seed, ex["row"]]).integers(len(imgs["bytes"]))
            data = imgs["bytes"][k]
        else:
            data = rec["image"]["bytes"]
        try:
            return preprocess_one(bytes(data), self.cfg.image)
        except Exception as e:  # noqa: BLE001
            raise DataError(None, None, None, f"profile {ex['id']} (source row {ex['row']}): cannot decode its image "
                            f"({type(e).__name__}: {e})") from None

    def _resampled(self, ex: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A multiple-choice training item with fresh distractors and order (same question, same true value)."""
        true = ex["options"][ex["correct_letter"]]
        others = [v for v in self._option_pool[(ex["type"], ex["item"])] if v != true]
        opts = [true] + list(rng.choice(others, 3, replace=False)) if len(others) >= 3 else \
            list(ex["options"].values())
        order = rng.permutation(4)
        options = {L: str(opts[j]) for L, j in zip("ABCD", order)}
        letter = "ABCD"[int(np.nonzero(order == opts.index(true))[0][0])]
        prompt = ex["mc_prompt"](ex["question"], options)
        t = chat.tokenize(self.tok, prompt, true if self.cfg.cls_answer == "option" else letter,
                             self.cfg.image_seq_length)
        return t.input_ids, t.loss_mask

    def _load_batch(self, global_idx: np.ndarray, local_idx: np.ndarray, batch_index: int = 0
                    ) -> dict[str, np.ndarray]:
        cfg, B = self.cfg, len(local_idx)
        T = self._pad_len(global_idx)
        pad = self.tok.pad_id
        out = {"input_ids": np.full((B, T), pad, np.int32), "attention_mask": np.zeros((B, T), np.int32),
               "labels": np.full((B, T), pad, np.int32), "loss_mask": np.zeros((B, T), np.float32),
               "positions": np.zeros((B, T), np.int32), "valid": local_idx >= 0,
               "has_image": np.zeros(B, bool), "row": np.full(B, -1, np.int32), "item": np.full(B, -1, np.int32)}
        meta = {k: [""] * B for k in _META_STR}
        if self.with_images:
            h, w = cfg.image.crop_hw
            out["pixel_values"] = np.zeros((B, 3, h, w), np.float32)
        for b, i in enumerate(local_idx):
            if i < 0:
                continue
            ex = self.examples[i]
            ids, lm = ex["input_ids"], ex["loss_mask"]
            if self._option_pool and "options" in ex:  # seeded by stream position: resumable and deterministic
                ids, lm = self._resampled(ex, np.random.default_rng([cfg.seed, 7, batch_index, int(i)]))
            n = len(ids)
            sl = slice(T - n, T) if cfg.padding_side == "left" else slice(0, n)
            out["input_ids"][b, sl] = ids
            out["attention_mask"][b, sl] = 1
            out["labels"][b, sl] = np.where(lm, ids, pad)
            out["loss_mask"][b, sl] = lm
            out["positions"][b, sl] = np.arange(n)
            out["row"][b], out["item"][b] = ex["row"], ex["item"]
            for k in _META_STR:
                meta[k][b] = ex[k]
            if ex["type"] == "Image_Textual":
                out["has_image"][b] = True
                out["pixel_values"][b] = self._image(ex)
        out.update({k: np.asarray(v, dtype=str) for k, v in meta.items()})
        return out

    # ------------------------------------------------------------------ iteration and state
    def _iter_ds(self):
        return self._ds.to_iter_dataset(grain.ReadOptions(num_threads=self.cfg.num_threads,
                                                          prefetch_buffer_size=self.cfg.prefetch))

    def __iter__(self):
        self._it = iter(self._iter_ds())
        if self._pending_state is not None:
            self._it.set_state(self._pending_state)
            self._pending_state = None
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            iter(self)
        return next(self._it)

    def __len__(self) -> int:
        return self.num_batches

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable; includes the config fields that must match on restore."""
        st = dict(self._it.get_state()) if self._it is not None else {"next_index": 0}
        if self._pending_state is not None:
            st = dict(self._pending_state)
        return {"grain": st, "seed": self.cfg.seed, "global_batch_size": self.cfg.global_batch_size,
                "num_examples": len(self.examples)}

    def set_state(self, state: dict[str, Any]):
        for k in ("seed", "global_batch_size", "num_examples"):
            mine = self.cfg.seed if k == "seed" else (
                self.cfg.global_batch_size if k == "global_batch_size" else len(self.examples))
            if state.get(k) != mine:
                raise ConfigError(f"pipeline state has {k}={state.get(k)}, this pipeline {mine}: not the same run")
        if self._it is not None:
            self._it.set_state(state["grain"])
        else:
            self._pending_state = dict(state["grain"])


def forget_ids(source) -> tuple[str, ...]:
    """Profile IDs of a source (e.g. forget_5), to restrict Test_Set with `PipelineConfig(ids=...)`."""
    return tuple(as_str(source[i]["ID"]) for i in range(len(source)))


def image_config(image_size: int) -> ImageProcessorConfig:
    """CLIP preprocessing at `image_size` px (the embedded world uses 32)."""
    return ImageProcessorConfig(shortest_edge=image_size, crop_hw=(image_size, image_size))


__all__: Sequence[str] = ("PipelineConfig", "InputPipeline", "forget_ids", "image_config", "TYPES")
