"""Reading a benchmark's parquet files into TFDS (ArrayRecord, no TensorFlow): what every benchmark reader shares.

- `BadRowReport`: what `skip_bad_rows` skipped (vkd_jax.errors.DataError: a malformed file or row, named by file,
  row and column); `iter_valid_rows`: the valid rows of parquet files under a validator;
- `QuietBuilder`: the base of the benchmarks' local-files TFDS builders; `data_source`: one of them as a
  random-access `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow_datasets as tfds

from vkd_jax.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BadRowReport:
    """What `skip_bad_rows` skipped: one entry per row (or whole file) with the error message."""
    skipped: list[dict] = dataclasses.field(default_factory=list)

    def add(self, err: DataError):
        self.skipped.append({"file": err.file, "row": err.row, "column": err.column, "error": str(err)})
        log.warning("skipping bad input: %s", err)

    def __len__(self):
        return len(self.skipped)


def parquet_files(manual_dir, config: str) -> list[str]:
    """The parquet files of one config as the downloads lay them out: `<manual_dir>/<config>/*.parquet`."""
    d = os.path.join(os.fspath(manual_dir), config)
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".parquet")) if os.path.isdir(d) else []
    if not files:
        raise DataError(None, None, None, f"no parquet files in {d} (expected {config}/train-00000-of-0000N.parquet)")
    return files


def iter_valid_rows(manual_dir, config: str, columns, validate, skip_bad_rows: bool = False,
                    report: BadRowReport | None = None):
    """Yields ("<file>:<row>", example) for every valid row of `config`'s parquet files (`parquet_files`): each file
    must read and hold `columns`, each row passes `validate(file, row, record, config)`.

    File-level problems (empty / truncated parquet, missing column) raise DataError; with `skip_bad_rows` the
    whole file is skipped and reported. Row-level problems raise, or are skipped and reported. No valid row at all
    is an error either way."""
    import pyarrow.parquet as pq
    report = report if report is not None else BadRowReport()
    n_ok = 0
    for path in parquet_files(manual_dir, config):
        name = os.path.relpath(path, os.fspath(manual_dir))
        try:
            try:
                table = pq.read_table(path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
                raise DataError(name, None, None, f"not a readable parquet file ({type(e).__name__}: {e})") from None
            for c in columns:
                if c not in table.column_names:
                    raise DataError(name, None, c, f"missing column (file has {table.column_names})")
        except DataError as e:
            if not skip_bad_rows:
                raise
            report.add(e)
            continue
        for i, rec in enumerate(table.to_pylist()):
            try:
                ex = validate(name, i, rec, config)
            except DataError as e:
                if not skip_bad_rows:
                    raise
                report.add(e)
                continue
            n_ok += 1
            yield f"{name}:{i:06d}", ex
    if n_ok == 0:
        raise DataError(os.path.join(os.fspath(manual_dir), config), None, None,
                        f"no valid rows ({len(report)} skipped: {report.skipped[:3]})")


class QuietBuilder(tfds.core.GeneratorBasedBuilder):
    """A local-files builder: nothing is downloaded, so TFDS's download banners ("Downloading and preparing dataset
    Unknown size ...") would only mislead; one log line instead."""

    def _log_download_bytes(self) -> None:
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s", self.name)


def data_source(name: str, data_dir, manual_dir=None, **builder_kwargs):
    """tfds.data_source of one of our builders (train split, prepared from manual_dir on first use), without TFDS's
    progress bars and its warnings about the folder it is about to create."""
    kw = {}
    if manual_dir is not None:
        kw["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))}
    from absl import logging as absl_logging

    tfds.disable_progress_bar()
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # "Variant folder ... has no dataset_info.json": being written
    try:
        return tfds.data_source(name, data_dir=os.fspath(data_dir), split="train", builder_kwargs=builder_kwargs,
                                **kw)
    finally:
        absl_logging.set_verbosity(verbosity)
