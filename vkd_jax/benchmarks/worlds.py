"""What the embedded worlds (vkd_jax.benchmarks.<name>.generator) share: the syllables their names are made of,
the folder of generic images and its captions, the order in which people enter the forget splits, and the
atomic publication of the parquet splits (plus their texts, for the tokenizer).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

SYLLABLES = ("ka", "lo", "mi", "ren", "ta", "vo", "sil", "dun", "be", "ra", "no", "ti", "qua", "mar", "el", "zo",
             "pen", "ul", "gri", "sa", "to", "fen", "di", "ark")

GENERIC_DIR = "generic_images"
CAPTIONS = "captions.json"  # {file name: what the image shows}, beside the images (sources.ImageFolderSource)


def _word(rng, n_syl) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n_syl))


def unique_words(rng, n, n_syl, taken) -> list[str]:
    out = []
    while len(out) < n:
        w = _word(rng, n_syl)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def forget_order(seed: int, num_people: int) -> np.ndarray:
    """The order in which people enter the forget sets: forget_X is its first `split_size` people; forget split k
    (several unlearning runs from one vanilla model) is the k-th block of that size."""
    return np.random.default_rng([seed, 104729]).permutation(num_people)


def split_size(num_people: int, pct: int) -> int:
    return max(1, round(num_people * pct / 100))


def prompt_texts() -> list[str]:
    """What the embedded worlds' tokenizers learn besides their own text: MLLMU-Bench's prompt words (the shipped
    vanilla models' tokenizers, CLEAR's included, were trained with them), so that template words are single
    tokens."""
    from vkd_jax.benchmarks.mllmu.prompts import TOKENIZER_TEXTS

    return list(TOKENIZER_TEXTS)


def write_split(tmp: str, name: str, rows: list[dict]) -> None:
    """One split as the downloads lay it out: `tmp/<name>/train-00000-of-00001.parquet`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(tmp, name))
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(tmp, name, "train-00000-of-00001.parquet"))


def publish(tmp: str, out: str, names) -> None:
    """Move each finished `tmp/<name>` to `out/<name>` (replacing an older one): a reader sees whole splits."""
    for name in names:
        dst = os.path.join(out, name)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(os.path.join(tmp, name), dst)


def parquet_texts(out: str | os.PathLike, columns, encode) -> list[str]:
    """`encode(value)` -> texts of every value of `columns` in the parquet files of out/<split>/ (tokenizer
    training text)."""
    import pyarrow.parquet as pq

    texts = []
    for name in sorted(os.listdir(out)):
        d = os.path.join(out, name)
        if not os.path.isdir(d) or name.startswith("."):
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith(".parquet"):
                t = pq.read_table(os.path.join(d, f))
                for c in columns:
                    if c in t.column_names:
                        for v in t[c].to_pylist():
                            texts.extend(encode(v))
    return texts
