"""CLEAR: parquet reader with row validation, and the TFDS builder `clear_bench` (ArrayRecord, no TensorFlow).

The raw data is the dataset repository `therem/CLEAR` as downloaded (or as `vkd_jax.benchmarks.clear.generator`
writes it) in TFDS's manual_dir: `<manual_dir>/<config>/*.parquet`, configs as shared/spec/clear.md lists them.
TFDS config names cannot hold "+", so `forget10+tofu` is the TFDS config `forget10_tofu` (`tfds_name`); `load`
takes either.
One example per row, every column kept:
- `image`: {bytes, path} (empty for the text-only `+tofu` rows, which have `question`/`answer` instead);
- `caption`, `name`, `question`, `answer`, `paraphrased_caption`: text ("" when the row has none);
- `perturbed_captions`, `perturbed_names`, `options`: lists of text;
- `present_columns`: the columns the source row really had (decode_row gives back exactly those).
A malformed row (undecodable image, a list column that is not a list of strings, a row that is neither an image row
nor a text QA row) raises DataError naming file, row and column, or is skipped with `skip_bad_rows` (recorded in
`info.metadata["bad_rows"]`).

Retain perturbed sets per ratio: the hub has one `retain_perturbed` (people in no forget split); the follow-up work
(MMUnlearner) evaluates retain{NN} on a retain{NN}_perturbed it builds itself. `retain_perturbed_for(source, names)`
builds it the same way here: the rows of `retain_perturbed` whose person is one of retain{NN}'s people (for the
hub's splits every retain_perturbed person is in every retain split, so it is retain_perturbed itself).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import numpy as np

from vkd_jax.data.rows import BadRowReport, QuietBuilder, data_source, iter_valid_rows
from vkd_jax.errors import DataError

RATIOS = (1, 5, 10)
CONFIGS = ("full", "full+tofu", *[f"forget{p:02d}{s}" for p in RATIOS for s in ("", "+tofu", "_perturbed")],
           *[f"retain{100 - p}{s}" for p in RATIOS for s in ("", "+tofu")], "retain_perturbed", "real_faces",
           "real_world", "real_faces_train")
TEXT_COLUMNS = ("caption", "name", "question", "answer", "paraphrased_caption")
LIST_COLUMNS = ("perturbed_captions", "perturbed_names", "options")
ALL_COLUMNS = ("image",) + TEXT_COLUMNS + LIST_COLUMNS

log = logging.getLogger(__name__)


def tfds_name(config: str) -> str:
    return config.replace("+", "_")


def required_columns(config: str) -> tuple[str, ...]:
    if config.startswith("real_faces"):
        return ("image", "answer", "options")
    if config == "real_world":
        return ("image", "question", "answer", "options")
    if config.endswith("_perturbed"):
        return ("image", "caption", "name", "perturbed_captions", "paraphrased_caption", "perturbed_names")
    if config.endswith("+tofu"):
        return ("caption", "question", "answer")  # image rows carry a caption, text rows question + answer
    return ("image", "caption", "name")


def _check_image(file, row, value) -> dict:
    if not isinstance(value, dict) or not value.get("bytes"):
        raise DataError(file, row, "image", "expected a struct {bytes, path} with image bytes")
    try:
        from PIL import Image
        with Image.open(io.BytesIO(value["bytes"])) as im:
            im.load()
    except Exception as e:  # noqa: BLE001
        raise DataError(file, row, "image", f"undecodable image bytes ({type(e).__name__}: {e})") from None
    return {"bytes": bytes(value["bytes"]), "path": value.get("path") or ""}


def validate_row(file: str, row: int, rec: dict, config: str) -> dict:
    out: dict[str, Any] = {"present_columns": [c for c in ALL_COLUMNS if rec.get(c) is not None]}
    text_row = config.endswith("+tofu") and rec.get("image") is None
    if config.endswith("+tofu"):
        if text_row and (not rec.get("question") or rec.get("answer") is None):
            raise DataError(file, row, "question", "a text-only row needs a question and an answer")
        if not text_row and not rec.get("caption"):
            raise DataError(file, row, "caption", "an image row needs a caption")
    else:
        for c in required_columns(config):
            if rec.get(c) is None:
                raise DataError(file, row, c, "missing value")
    out["image"] = _check_image(file, row, rec["image"]) if rec.get("image") is not None else {"bytes": b"",
                                                                                              "path": ""}
    for c in TEXT_COLUMNS:
        v = rec.get(c)
        if v is not None and not isinstance(v, str):
            raise DataError(file, row, c, f"expected text, got {type(v).__name__}")
        out[c] = v or ""
    for c in LIST_COLUMNS:
        v = rec.get(c)
        if v is None:
            out[c] = []
            continue
        v = list(v) if isinstance(v, (list, tuple, np.ndarray)) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(file, row, c, f"expected a list of strings, got {v!r:.80}")
        out[c] = v
    return out


def iter_rows(manual_dir, config: str, skip_bad_rows: bool = False, report: BadRowReport | None = None):
    """Yields (key, example) for every valid row of `config` (iter_valid_rows with CLEAR's rules)."""
    return iter_valid_rows(manual_dir, config, required_columns(config),
                           validate_row, skip_bad_rows, report)


def decode_row(ex: dict) -> dict:
    """A stored example -> the dataset row: the columns it had, image bytes, text, lists of text."""
    def s(v):
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    out: dict[str, Any] = {}
    for c in (s(x) for x in ex.get("present_columns", ALL_COLUMNS)):
        if c == "image":
            out[c] = {"bytes": bytes(ex["image"]["bytes"]), "path": s(ex["image"]["path"])}
        elif c in LIST_COLUMNS:
            out[c] = [s(x) for x in ex[c]]
        else:
            out[c] = s(ex[c])
    return out


class Rows:
    """A random-access view of a clear_bench data source that decodes each row (`decode_row`)."""

    def __init__(self, source, indices=None):
        self.source = source
        self.indices = list(range(len(source))) if indices is None else list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return decode_row(self.source[self.indices[i]])


def retain_perturbed_for(retain_perturbed, retain_rows) -> Rows:
    """retain{NN}_perturbed, built as the follow-up work builds it (module docstring)."""
    keep = {retain_rows[i].get("name") for i in range(len(retain_rows))}
    src = retain_perturbed.source if isinstance(retain_perturbed, Rows) else retain_perturbed
    idx = retain_perturbed.indices if isinstance(retain_perturbed, Rows) else range(len(src))
    return Rows(src, [j for j in idx if decode_row(src[j]).get("name") in keep])


# ---------------------------------------------------------------- TFDS builder
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402


class ClearBenchConfig(tfds.core.BuilderConfig):
    pass


class ClearBench(QuietBuilder):
    """CLEAR (and the embedded CLEAR), one example per row, read from manual_dir parquet."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the dataset repository therem/CLEAR (or the output of "
        "`python -m vkd_jax.benchmarks.clear.generator --out DIR`) in manual_dir: "
        "<manual_dir>/<config>/train-0000X-of-0000N.parquet.")
    BUILDER_CONFIGS = [ClearBenchConfig(name=tfds_name(c), description=f"CLEAR {c}") for c in CONFIGS]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def __init__(self, *, skip_bad_rows: bool = False, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self.skip_bad_rows = skip_bad_rows
        super().__init__(**kwargs)

    def _info(self):
        img = tfds.features.FeaturesDict({"bytes": tfds.features.Scalar(np.object_), "path": tfds.features.Text()})
        feats = {"image": img, "present_columns": tfds.features.Sequence(tfds.features.Text())}
        feats.update({c: tfds.features.Text() for c in TEXT_COLUMNS})
        feats.update({c: tfds.features.Sequence(tfds.features.Text()) for c in LIST_COLUMNS})
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(feats), disable_shuffling=True,
                                              metadata=tfds.core.MetadataDict(),
                                              homepage="https://huggingface.co/datasets/therem/CLEAR")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, manual_dir):
        config = next(c for c in CONFIGS if tfds_name(c) == self.builder_config.name)
        report = BadRowReport()
        yield from iter_rows(os.fspath(manual_dir), config, self.skip_bad_rows, report)
        self.info.metadata["bad_rows"] = report.skipped


def load(config: str, data_dir, manual_dir=None, skip_bad_rows: bool = False) -> Rows:
    """`clear_bench/<config>` (train split) as decoded random-access rows (prepared on first use)."""
    if config not in CONFIGS and config not in [tfds_name(c) for c in CONFIGS]:
        raise ValueError(f"unknown CLEAR config {config!r}; expected one of {CONFIGS}")
    return Rows(data_source(f"clear_bench/{tfds_name(config)}", data_dir, manual_dir, skip_bad_rows=skip_bad_rows))
