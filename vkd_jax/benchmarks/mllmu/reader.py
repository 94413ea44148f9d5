"""MLLMU-Bench: parquet reader with row validation, and the TFDS builder `mllmu_bench` (ArrayRecord, no TensorFlow).

The raw data is the dataset repository as downloaded (or as `vkd_jax.benchmarks.mllmu.generator` writes it) in TFDS's
manual_dir: `<manual_dir>/<config>/*.parquet`. One TFDS example per profile row; every column is kept:

- `image`, `images`: {bytes, path} structs of encoded image bytes (`image` for all configs but Test_Set, `images`,
  the list of other poses, for Test_Set; an absent one is stored empty).
- `ID`, `Directory`, `question`, `answer`: text; `biography`: the original JSON string.
- `Classification_Task`, `Generation_Task`, `Mask_Task`, `metadata`: nested structures stored as canonical JSON
  strings (tfds features cannot hold lists of dicts without TensorFlow); `decode_profile` gives back the exact
  Python structures. `present_columns` lists the columns the source row really had.

Usage (after `import vkd_jax.benchmarks.mllmu.reader`):
    tfds.data_source("mllmu_bench/forget_5", data_dir=D, download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=M)})
`builder_kwargs={"skip_bad_rows": True}` skips malformed rows instead of raising; skipped rows are logged and
recorded in the dataset's `info.metadata["bad_rows"]`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import numpy as np

from vkd_jax.data.rows import BadRowReport, QuietBuilder, data_source, iter_valid_rows
from vkd_jax.errors import DataError

CONFIGS = ("Full_Set", "Test_Set", "Retain_Set", "ft_Data", "forget_5", "forget_10", "forget_15",
           "retain_95", "retain_90", "retain_85")
LETTERS = ("A", "B", "C", "D")
TASK_COLUMNS = ("Classification_Task", "Generation_Task", "Mask_Task")
JSON_COLUMNS = TASK_COLUMNS + ("metadata",)
TEXT_COLUMNS = ("ID", "Directory", "biography", "question", "answer")
ALL_COLUMNS = ("image", "images") + TEXT_COLUMNS + JSON_COLUMNS

log = logging.getLogger(__name__)


def required_columns(config: str) -> tuple[str, ...]:
    if config == "ft_Data":
        return ("ID", "image", "metadata")
    return ("ID", "images" if config == "Test_Set" else "image", "biography") + TASK_COLUMNS


def _check_image(file, row, column, value) -> dict:
    if not isinstance(value, dict) or "bytes" not in value:
        raise DataError(file, row, column, f"expected a struct {{bytes, path}}, got {type(value).__name__}")
    data = value["bytes"]
    if not data:
        raise DataError(file, row, column, "empty image bytes")
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # a full decode: verify() misses truncated pixel data
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise DataError(file, row, column, f"undecodable image bytes ({type(e).__name__}: {e})") from None
    return {"bytes": bytes(data), "path": value.get("path") or ""}


def _parse_json(file, row, column, value):
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(file, row, column, f"malformed JSON ({e})") from None
    return value


def _check_classification(file, row, value):
    if not isinstance(value, dict):
        raise DataError(file, row, "Classification_Task", f"expected a struct, got {type(value).__name__}")
    for kind in ("Image_Textual_Questions", "Pure_Text_Questions"):
        for i, q in enumerate(value.get(kind) or []):
            col = f"Classification_Task.{kind}[{i}]"
            opts = q.get("Options") or {}
            if sorted(k for k, v in opts.items() if v is not None) != list(LETTERS):
                raise DataError(file, row, col + ".Options", f"options must be exactly A-D, got {sorted(opts)}")
            if q.get("Correct_Answer") not in LETTERS:
                raise DataError(file, row, col + ".Correct_Answer",
                                f"option letter {q.get('Correct_Answer')!r} is not one of A-D")


def _strip_none_options(value):
    # parquet structs give every Options key; keep only A-D so the stored JSON is the benchmark's structure
    for kind in ("Image_Textual_Questions", "Pure_Text_Questions"):
        for q in value.get(kind) or []:
            q["Options"] = {k: q["Options"][k] for k in LETTERS}
    return value


def validate_row(file: str, row: int, rec: dict, config: str) -> dict:
    """One parquet row -> the TFDS example dict; raises DataError naming file, row and column."""
    out: dict[str, Any] = {"present_columns": [c for c in ALL_COLUMNS if c in rec and rec[c] is not None]}
    for c in required_columns(config):
        if rec.get(c) is None:
            raise DataError(file, row, c, "missing value")
    out["image"] = _check_image(file, row, "image", rec["image"]) if rec.get("image") is not None else \
        {"bytes": b"", "path": ""}
    out["images"] = [_check_image(file, row, f"images[{i}]", v) for i, v in enumerate(rec.get("images") or [])]
    for c in TEXT_COLUMNS:
        v = rec.get(c)
        out[c] = "" if v is None else str(v)
    if out["biography"]:
        bio = _parse_json(file, row, "biography", out["biography"])
        if not isinstance(bio, dict):
            raise DataError(file, row, "biography", f"expected a JSON object, got {type(bio).__name__}")
    for c in JSON_COLUMNS:
        v = _parse_json(file, row, c, rec.get(c))
        if c == "Classification_Task" and v is not None:
            _check_classification(file, row, v)
            v = _strip_none_options(v)
        out[c] = json.dumps(v, ensure_ascii=False, sort_keys=False)
    return out


def iter_profiles(manual_dir, config: str, skip_bad_rows: bool = False, report: BadRowReport | None = None):
    """Yields (key, example) for every valid profile of `config` (iter_valid_rows with MLLMU-Bench's rules)."""
    return iter_valid_rows(manual_dir, config, required_columns(config),
                           validate_row, skip_bad_rows, report)


def decode_profile(ex: dict) -> dict:
    """A stored example (from `tfds.data_source`) -> the benchmark row: str fields, nested task structures,
    image structs with bytes. Columns the source did not have are absent."""
    def s(v):
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    present = [s(c) for c in ex.get("present_columns", ALL_COLUMNS)]
    out: dict[str, Any] = {}
    for c in present:
        if c == "image":
            out[c] = {"bytes": bytes(ex["image"]["bytes"]), "path": s(ex["image"]["path"])}
        elif c == "images":
            im = ex["images"]
            out[c] = [{"bytes": bytes(b), "path": s(p)} for b, p in zip(im["bytes"], im["path"])]
        elif c in JSON_COLUMNS:
            out[c] = json.loads(s(ex[c]))
        else:
            out[c] = s(ex[c])
    return out


# ---------------------------------------------------------------- TFDS builder (importing this module registers
# `mllmu_bench`).
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402


class MllmuBenchConfig(tfds.core.BuilderConfig):
    pass


class MllmuBench(QuietBuilder):
    """MLLMU-Bench (and the embedded benchmark), one example per profile, read from manual_dir parquet."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the dataset repository MLLMMU/MLLMU-Bench (or the output of "
        "`python -m vkd_jax.benchmarks.mllmu.generator --out DIR`) in manual_dir: "
        "<manual_dir>/<config>/train-0000X-of-0000N.parquet.")
    BUILDER_CONFIGS = [MllmuBenchConfig(name=c, description=f"MLLMU-Bench {c}") for c in CONFIGS]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # tfds' default needs the `importlib_resources` backport; this file is the code
        return epath.Path(__file__)

    def __init__(self, *, skip_bad_rows: bool = False, **kwargs):
        kwargs.setdefault("file_format", "array_record")  # tfrecord writing would need TensorFlow
        self.skip_bad_rows = skip_bad_rows
        super().__init__(**kwargs)

    def _info(self):
        img = tfds.features.FeaturesDict({"bytes": tfds.features.Scalar(np.object_),
                                          "path": tfds.features.Text()})
        feats = {"image": img, "images": tfds.features.Sequence(img),
                 "present_columns": tfds.features.Sequence(tfds.features.Text())}
        feats.update({c: tfds.features.Text() for c in TEXT_COLUMNS + JSON_COLUMNS})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(feats), disable_shuffling=True,
            metadata=tfds.core.MetadataDict(), homepage="https://huggingface.co/datasets/MLLMMU/MLLMU-Bench")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, manual_dir):
        report = BadRowReport()
        yield from iter_profiles(os.fspath(manual_dir), self.builder_config.name, self.skip_bad_rows, report)
        self.info.metadata["bad_rows"] = report.skipped
        if len(report):
            log.warning("mllmu_bench/%s: skipped %d bad rows/files", self.builder_config.name, len(report))


def load(config: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
         skip_bad_rows: bool = False):
    """The `train` split of `mllmu_bench/<config>` as a random-access tfds data source (prepared on first use)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown MLLMU-Bench config {config!r}; expected one of {CONFIGS}")
    return data_source(f"mllmu_bench/{config}", data_dir, manual_dir, skip_bad_rows=skip_bad_rows)

