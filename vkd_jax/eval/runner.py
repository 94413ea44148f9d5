"""What every benchmark's evaluation shares: the evaluator's config, a query (prompt + images), and the `Runner`
that tokenizes queries, batches them with static shapes (left-padded to a length bucket, filled to `batch_size`
with copies of their first row, so only a few shapes are ever compiled and a row's answer never depends on its
batch), decodes greedily with the KV cache (`vkd_jax.eval.decode`) or scores continuations. The protocols that
build the queries and score the answers are the benchmarks' own (vkd_jax.benchmarks.<name>.protocol).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from flax import nnx

from vkd_jax.data import chat
from vkd_jax.data.pipeline import as_str, image_config
from vkd_jax.errors import DataError
from vkd_jax.eval.decode import continuation_logprobs, greedy_decode, strip_after_eos
from vkd_jax.preprocess import ImageProcessorConfig, preprocess_one

# the kinds of question a query can be: task x form (MLLMU-Bench's; CLEAR's protocol builds its own on them)
TASKS = ("classification", "cloze", "generation")
TASK_KEYS = {"classification": "cls", "cloze": "cloze", "generation": "gen"}
TYPE_KEYS = {"Image_Textual": "vqa", "Pure_Text": "qa"}
TEST_POSES = ("mean", "random")
CLS_PARSE = ("official", "lenient")
CLS_SCORING = ("generate", "likelihood")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = TASKS
    types: tuple[str, ...] = ("Image_Textual", "Pure_Text")
    max_new_tokens: int = 50                 # the benchmark's budget, for every task
    batch_size: int = 8
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)
    seed: int = 0                            # Test_Set pose draws (test_pose="random") and few-shot demo draws
    image: ImageProcessorConfig | None = None  # default: CLIP preprocessing at the model's image size
    few_shot: bool = False
    few_shot_cls: int = 1                    # demo profiles: the official script's random.sample(id_list, 1) ...
    few_shot_cloze: int = 2                  # ... and (id_list, 2) for LLaVA
    max_questions: int | None = None         # per set and kind (first ones, in source order): quick checks
    cls_scoring: str = "generate"            # "generate": the protocol; "likelihood": see the module docstring
    cls_parse: str = "official"              # "official": first character, A-D only; "lenient": first alphanumeric
    test_pose: str = "mean"                  # Test_Set: "mean" over all poses, or "random" (the official reading)

    def __post_init__(self):
        bad = (set(self.tasks) - set(TASK_KEYS)) | (set(self.types) - set(TYPE_KEYS))
        if bad:
            raise ValueError(f"EvalConfig: unknown tasks/types {sorted(bad)}; tasks {tuple(TASK_KEYS)}, "
                             f"types {tuple(TYPE_KEYS)}")
        for name, value, allowed in (("cls_scoring", self.cls_scoring, CLS_SCORING),
                                     ("cls_parse", self.cls_parse, CLS_PARSE),
                                     ("test_pose", self.test_pose, TEST_POSES)):
            if value not in allowed:
                raise ValueError(f"EvalConfig.{name}={value!r}: use one of {allowed}")
        if min(self.batch_size, self.max_new_tokens, self.few_shot_cls, self.few_shot_cloze) < 1:
            raise ValueError(f"EvalConfig: batch_size={self.batch_size}, max_new_tokens={self.max_new_tokens}, "
                             f"few_shot_cls={self.few_shot_cls} and few_shot_cloze={self.few_shot_cloze} must be >= 1")

    def protocol(self) -> dict:
        """What a reader of a table needs to know about how it was scored."""
        return {"cls_scoring": self.cls_scoring, "cls_parse": self.cls_parse, "test_pose": self.test_pose,
                "few_shot": self.few_shot,
                "few_shot_profiles": {"classification": self.few_shot_cls, "cloze": self.few_shot_cloze}
                if self.few_shot else {},
                "max_new_tokens": self.max_new_tokens, "max_questions": self.max_questions}


@dataclasses.dataclass
class Query:
    """One prompt to run: its example (`ex`: id, task, ... and, for multiple choice, `options` {letter: text}),
    the exact prompt string, and the (source, row, pose) of each image in it, demos first."""
    ex: dict
    prompt: str
    images: list
    pose: int | None


def image_bytes(source, row: int, pose: int | None) -> bytes:
    """The encoded image of a source row: its `image`, or pose `pose` of its `images` (MLLMU-Bench's Test_Set)."""
    rec = source[row]
    if pose is not None:
        return bytes(rec["images"]["bytes"][pose])
    return bytes(rec["image"]["bytes"])


def bucket(n: int, buckets: Sequence[int], what: str) -> int:
    for b in sorted(buckets):
        if n <= b:
            return b
    raise DataError(None, None, None, f"{what} has {n} prompt tokens, longer than the largest length bucket "
                    f"{max(buckets)}; raise EvalConfig.length_buckets")


class Runner:
    """Tokenizes prompts, batches them with static shapes, decodes greedily or scores continuations (every
    benchmark's protocol runs its queries through it)."""

    def __init__(self, model, tokenizer, cfg: EvalConfig):
        c = model.config
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.split = nnx.split(model)
        self.image_seq_length, self.image_token = c.image_seq_length, c.image_token_index
        self.image_cfg = cfg.image or image_config(c.vision.image_size)
        self._pixels: dict = {}
        # pad slots are masked, but the model finds images by id: never pad with the image token
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id != self.image_token else tokenizer.eos_id

    def model_ids(self, prompt: str, answer: str | None = None, eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of a prompt (and answer, + EOS), <image> expanded, the tokenizer's <image> id mapped to the
        model's image token, and the answer mask."""
        t = chat.tokenize(self.tok, prompt, answer, self.image_seq_length, eos=eos)
        ids = t.input_ids
        if self.tok.image_token_id != self.image_token:
            ids = np.where(ids == self.tok.image_token_id, self.image_token, ids)
        return ids, t.loss_mask

    def pixels(self, source, row: int, pose: int | None) -> np.ndarray:
        key = (id(source), row, pose)
        if key not in self._pixels:
            try:
                self._pixels[key] = preprocess_one(image_bytes(source, row, pose), self.image_cfg)
            except Exception as e:  # noqa: BLE001
                raise DataError(None, None, None, f"profile {as_str(source[row]['ID'])} (source row {row}): cannot "
                                f"decode its image ({type(e).__name__}: {e})") from None
        return self._pixels[key]

    def forget_images(self) -> None:
        """Drop the preprocessed images kept for reuse (host memory)."""
        self._pixels.clear()

    def _batches(self, toks: list[np.ndarray], queries: list[Query]):
        """Left-padded static-shape batches of the token rows `toks` (row j belongs to `queries[j]`): yields
        (indices into toks, rows, ids [B, T], mask [B, T], pixel_values or None); similar lengths share a batch."""
        B = self.cfg.batch_size
        order = np.argsort([len(t) for t in toks], kind="stable")
        for start in range(0, len(toks), B):
            idx = order[start:start + B]
            rows = list(idx) + [idx[0]] * (B - len(idx))  # fill with copies of the first row (static batch)
            q0 = queries[idx[0]]
            T = bucket(max(len(toks[i]) for i in idx), self.cfg.length_buckets,
                        f"{q0.ex['task']} question of profile {queries[idx[-1]].ex['id']}")
            ids = np.full((B, T), self.pad_id, np.int32)
            mask = np.zeros((B, T), np.int32)
            for b, i in enumerate(rows):
                ids[b, T - len(toks[i]):], mask[b, T - len(toks[i]):] = toks[i], 1
            n_img = len(q0.images)
            bad = np.nonzero((ids == self.image_token).sum(1) != n_img * self.image_seq_length)[0]
            if len(bad):  # under jit the model cannot check this itself
                raise DataError(None, None, None, f"profile {queries[rows[bad[0]]].ex['id']}: prompt holds "
                                f"{int((ids[bad[0]] == self.image_token).sum())} image tokens (id "
                                f"{self.image_token}), expected {n_img} x {self.image_seq_length}")
            px = np.stack([self.pixels(*im) for i in rows for im in queries[i].images]) if n_img else None
            yield idx, rows, ids, mask, px

    def generate(self, queries: list[Query], max_new_tokens: int | None = None) -> list[tuple[str, str]]:
        """-> per query (generation, decoded sequence): the new tokens' text, and prompt + generation decoded as
        MLLMU-Bench's script decodes `outputs[0][2:]` (special tokens skipped)."""
        prompt_ids = [self.tok.encode(q.prompt) for q in queries]
        toks = [self.model_ids(q.prompt)[0] for q in queries]
        out: list[tuple[str, str]] = [("", "")] * len(queries)
        for idx, _, ids, mask, px in self._batches(toks, queries):
            gen = greedy_decode(self.model, ids, mask, px, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                eos_id=self.tok.eos_id, pad_id=self.pad_id, split=self.split)
            for b, seq in enumerate(strip_after_eos(gen[:len(idx)], self.tok.eos_id)):
                i = idx[b]
                out[i] = (self.tok.decode(seq), self.tok.decode(prompt_ids[i][2:] + seq))
        return out

    def _continuations(self, queries: list[Query], answers: list[str], eos: bool) -> tuple[np.ndarray, np.ndarray]:
        """(summed log p, number of tokens) of each answer as the continuation of its query's prompt."""
        toks, masks = [], []
        for q, a in zip(queries, answers):
            ids, lm = self.model_ids(q.prompt, a, eos=eos)
            toks.append(ids), masks.append(lm)
        scores = np.zeros(len(toks))
        for idx, rows, ids, mask, px in self._batches(toks, queries):
            tgt = np.zeros(ids.shape, bool)
            for b, i in enumerate(rows):
                tgt[b, ids.shape[1] - len(masks[i]):] = masks[i]
            scores[idx] = continuation_logprobs(self.model, ids, mask, tgt, px, split=self.split)[:len(idx)]
        return scores, np.asarray([int(m.sum()) for m in masks])

    def option_scores(self, queries: list[Query]) -> list[dict[str, float]]:
        """Multiple-choice queries -> {letter: log p(" {option}" + EOS | the prompt)}, summed over the answer
        tokens (cls_scoring="likelihood"); the letters are each query's `ex["options"]` keys."""
        pairs = [(j, L) for j, q in enumerate(queries) for L in sorted(q.ex["options"])]
        scores, _ = self._continuations([queries[j] for j, _ in pairs],
                                        [queries[j].ex["options"][L] for j, L in pairs], eos=True)
        out: list[dict[str, float]] = [{} for _ in queries]
        for (j, L), v in zip(pairs, scores):
            out[j][L] = float(v)
        return out

    def answer_nll(self, queries: list[Query], answers: list[str]) -> np.ndarray:
        """Per-token NLL of each answer after its query's prompt, in the chat rendering "{prompt} {answer} " (no
        EOS): CLEAR's own Prob / Truth Ratio."""
        if not queries:
            return np.zeros(0)
        scores, n = self._continuations(queries, [a + " " for a in answers], eos=False)
        return -scores / np.maximum(n, 1)
