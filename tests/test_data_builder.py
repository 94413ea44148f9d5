"""TFDS builder `mllmu_bench` over a fixture in the exact parquet schema, and every bad input of issue 3 item 6."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
from vkd_jax.benchmarks.mllmu.reader import DataError, decode_profile

pytestmark = pytest.mark.integration


def _source(tmp_path, config, **kw):
    return tfds.data_source(f"mllmu_bench/{config}", data_dir=str(tmp_path / "data"), split="train",
                            download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                                manual_dir=str(tmp_path / "manual"))}, **kw)


def test_builder_configs_are_the_benchmark_configs():
    assert [c.name for c in mllmu_bench.MllmuBench.BUILDER_CONFIGS] == list(mllmu_bench.CONFIGS)
    assert set(mllmu_bench.CONFIGS) == {"Full_Set", "Test_Set", "Retain_Set", "ft_Data", "forget_5", "forget_10",
                                        "forget_15", "retain_95", "retain_90", "retain_85"}


def test_plain_tfds_data_source_keeps_every_field(tmp_path, mllmu_parquet):
    rows = mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", n=5, shards=2)
    src = _source(tmp_path, "forget_5")
    assert len(src) == 5
    assert (tmp_path / "data" / "mllmu_bench" / "forget_5" / "1.0.0").is_dir()
    files = os.listdir(tmp_path / "data" / "mllmu_bench" / "forget_5" / "1.0.0")
    assert any(".array_record" in f for f in files)
    for i in range(5):  # order of the parquet rows is kept
        assert decode_profile(src[i]) == rows[i]


def test_test_set_keeps_all_pose_images(tmp_path, mllmu_parquet):
    rows = mllmu_parquet.write_fixture(tmp_path / "manual", "Test_Set", n=3)
    src = mllmu_bench.load("Test_Set", tmp_path / "data", tmp_path / "manual")
    got = decode_profile(src[2])
    assert got == rows[2] and len(got["images"]) == 3 and "image" not in got


def test_ft_data_metadata(tmp_path, mllmu_parquet):
    rows = mllmu_parquet.write_fixture(tmp_path / "manual", "ft_Data", n=3)
    src = mllmu_bench.load("ft_Data", tmp_path / "data", tmp_path / "manual")
    got = decode_profile(src[1])
    assert got["metadata"] == json.loads(rows[1]["metadata"]) and got["image"] == rows[1]["image"]


def _bad_rows(mllmu_parquet):
    rows = [mllmu_parquet.profile(i) for i in range(5)]
    rows[1]["image"] = {"bytes": b"\x89PNG not really", "path": "x.png"}
    rows[2]["biography"] = '{"Name": "Person 2", '
    rows[3]["Classification_Task"]["Pure_Text_Questions"][1]["Correct_Answer"] = "E"
    return rows


@pytest.mark.parametrize("row,column,words", [
    (1, "image", "undecodable image bytes"),
    (2, "biography", "malformed JSON"),
    (3, "Classification_Task.Pure_Text_Questions[1].Correct_Answer", "not one of A-D"),
])
def test_bad_row_errors_name_file_row_column(tmp_path, row, column, words, mllmu_parquet):
    rows = _bad_rows(mllmu_parquet)
    keep = [r for i, r in enumerate(rows) if i in (0, row)]  # one bad row at position 1
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", rows=keep)
    with pytest.raises(DataError) as e:
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5"))
    msg = str(e.value)
    assert "forget_5/train-00000-of-00001.parquet" in msg and "row 1" in msg and f"column '{column}'" in msg
    assert words in msg
    # and through TFDS: preparing fails with the same message, no dataset is left behind
    with pytest.raises(Exception, match="row 1"):
        _source(tmp_path, "forget_5")


def test_missing_column(tmp_path, mllmu_parquet):
    schema = pa.schema([f for f in mllmu_parquet.SCHEMA if f.name != "Mask_Task"])
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", n=2, schema=schema)
    with pytest.raises(DataError, match=r"forget_5/train-00000-of-00001.parquet: column 'Mask_Task': missing column"):
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5"))


@pytest.mark.parametrize("content", [b"", b"PAR1 truncated"])
def test_empty_or_truncated_parquet(tmp_path, content, mllmu_parquet):
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", n=3)
    good = (tmp_path / "manual" / "forget_5" / "train-00000-of-00001.parquet").read_bytes()
    p = tmp_path / "manual" / "forget_5" / "train-00001-of-00001.parquet"
    p.write_bytes(content or b"")
    with pytest.raises(DataError, match="train-00001-of-00001.parquet: not a readable parquet file"):
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5"))
    p.write_bytes(good[: len(good) // 2])  # truncated real file
    with pytest.raises(DataError, match="train-00001-of-00001.parquet: not a readable parquet file"):
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5"))
    report = mllmu_bench.BadRowReport()
    got = list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5", skip_bad_rows=True, report=report))
    assert len(got) == 3 and len(report) == 1 and report.skipped[0]["row"] is None


def test_skip_bad_rows_skips_counts_reports(tmp_path, mllmu_parquet):
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", rows=_bad_rows(mllmu_parquet))
    src = _source(tmp_path, "forget_5", builder_kwargs={"skip_bad_rows": True})
    assert [decode_profile(src[i])["ID"] for i in range(len(src))] == ["000", "004"]
    builder = tfds.builder("mllmu_bench/forget_5", data_dir=str(tmp_path / "data"))
    bad = builder.info.metadata["bad_rows"]
    assert [(b["row"], b["column"]) for b in bad] == [
        (1, "image"), (2, "biography"), (3, "Classification_Task.Pure_Text_Questions[1].Correct_Answer")]


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path, mllmu_parquet):
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", rows=_bad_rows(mllmu_parquet)[1:2])
    with pytest.raises(DataError, match="no valid rows"):
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_5", skip_bad_rows=True))


def test_missing_config_folder(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match="no parquet files in .*forget_10"):
        list(mllmu_bench.iter_profiles(tmp_path / "manual", "forget_10"))


def test_real_parquet_layout_roundtrip_via_pyarrow(tmp_path, mllmu_parquet):
    # the fixture itself is in the benchmark's schema: nested structs, not JSON strings
    mllmu_parquet.write_fixture(tmp_path / "manual", "forget_5", n=1)
    t = pq.read_table(tmp_path / "manual" / "forget_5" / "train-00000-of-00001.parquet")
    assert pa.types.is_struct(t.schema.field("Classification_Task").type)
    assert pa.types.is_list(t.schema.field("Generation_Task").type)
