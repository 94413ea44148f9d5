"""gs:// work directories, offline: fsspec's in-memory filesystem stands in for GCS under the "gs" scheme, and our
own writers (atomic files and folders, metrics JSONL + TensorBoard, eval caches, results, report, plots, reproduce's
comparison, hf_export staging) must land under gs://... and read back. Orbax array I/O (tensorstore's gcs driver)
cannot run offline and is not exercised here."""

import json
import math
import os
import uuid

import fsspec
import ml_collections
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry as fsspec_registry

from vkd_jax import io_utils

pytestmark = pytest.mark.integration

FAKE_RESULTS = {
    "method": "vkd", "config": {"forget_ratio": 5, "seed": 0},
    "vanilla": {s: {"vqa_cls_acc": 90.0, "qa_cls_acc": 80.0} for s in ("forget", "test", "retain", "celebrity")},
    "unlearned": {s: {"vqa_cls_acc": 30.0, "qa_cls_acc": 80.0} for s in ("forget", "test", "retain", "celebrity")},
    "efficiency": {"unlearn_seconds": 1.5, "steps": 2, "trainable_params": 10, "total_params": 100},
    "relearn": {"fractions": [0.5], "forget_vqa_cls_acc": [40.0], "before": [30.0], "ag": [10.0], "steps": 2},
}


@pytest.fixture
def gs(monkeypatch):
    """A fresh gs://<bucket> on the in-memory filesystem; yields its root URI."""
    from etils.epath import backend, gpath

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath would pick tf.io.gfile otherwise
    saved = {k: fsspec_registry.get(k) for k in ("gs", "gcs")}
    for proto in ("gs", "gcs"):  # epath's fsspec backend asks for "gcs"
        fsspec.register_implementation(proto, MemoryFileSystem, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    bucket = f"vkd-test-{uuid.uuid4().hex[:8]}"
    yield f"gs://{bucket}"
    fs = MemoryFileSystem()
    if fs.exists(f"/{bucket}"):
        fs.rm(f"/{bucket}", recursive=True)
    for k, v in saved.items():
        fsspec_registry.pop(k, None)
        if v is not None:
            fsspec_registry[k] = v
    backend.fsspec_backend._get_filesystem.cache_clear()


def _ls(uri) -> list[str]:
    return sorted(p.name for p in epath.Path(uri).iterdir())


def test_paths_resolve_and_local_cache(tmp_path):
    assert io_utils.is_remote("gs://b/run") and not io_utils.is_remote("runs/x")
    assert io_utils.resolve("gs://b/run") == "gs://b/run"
    assert io_utils.resolve("runs/x") == os.path.abspath("runs/x")
    assert io_utils.local_cache_dir("gs://b/a run/", str(tmp_path)) == str(tmp_path / "gs" / "b" / "a_run")
    assert io_utils.local_cache_dir(str(tmp_path / "w")) == str(tmp_path / "w")


def test_atomic_files_on_gs(gs):
    io_utils.atomic_write_text(f"{gs}/run/eval/x.json", json.dumps({"a": 1}))
    io_utils.atomic_write_bytes(f"{gs}/run/blob.bin", b"\x00\x01")
    assert io_utils.read_json_if_exists(f"{gs}/run/eval/x.json") == {"a": 1}
    assert io_utils.read_json_if_exists(f"{gs}/run/eval/missing.json") is None
    assert epath.Path(f"{gs}/run/blob.bin").read_bytes() == b"\x00\x01"
    io_utils.atomic_write_text(f"{gs}/run/eval/x.json", "{}")  # replaces
    assert io_utils.read_text(f"{gs}/run/eval/x.json") == "{}"
    assert _ls(f"{gs}/run") == ["blob.bin", "eval"] and _ls(f"{gs}/run/eval") == ["x.json"]  # no temp files left


def test_atomic_dir_on_gs(gs):
    out = f"{gs}/run/stage/params"
    with io_utils.atomic_dir(out) as tmp:
        assert tmp.startswith(f"{gs}/run/stage/params.tmp-")
        epath.Path(tmp, "model_config.json").write_text("{}")
        assert not io_utils.is_complete_dir(out)
    assert io_utils.is_complete_dir(out) and _ls(out) == [io_utils.COMPLETE_MARKER, "model_config.json"]
    with pytest.raises(FileExistsError):
        with io_utils.atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):  # a failed rewrite leaves the old folder whole and no temp prefix behind
        with io_utils.atomic_dir(out, overwrite=True) as tmp:
            epath.Path(tmp, "half.bin").write_bytes(b"x")
            raise RuntimeError("crash")
    assert _ls(f"{gs}/run/stage") == ["params"] and io_utils.is_complete_dir(out)
    with io_utils.atomic_dir(out, overwrite=True) as tmp:
        epath.Path(tmp, "sub").mkdir()
        epath.Path(tmp, "sub", "new.txt").write_text("new")
    assert _ls(out) == [io_utils.COMPLETE_MARKER, "sub"] and io_utils.read_text(f"{out}/sub/new.txt") == "new"
    assert _ls(f"{gs}/run/stage") == ["params"]
    with io_utils.atomic_dir(f"{gs}/run/empty"):
        pass
    assert io_utils.is_complete_dir(f"{gs}/run/empty") and _ls(f"{gs}/run") == ["empty", "stage"]


def test_atomic_dir_local_unchanged(tmp_path):
    out = tmp_path / "params"
    with io_utils.atomic_dir(out) as tmp:
        assert isinstance(tmp, str) and os.path.dirname(tmp) == str(tmp_path)
        (epath.Path(tmp) / "a.txt").write_text("a")
    assert sorted(os.listdir(out)) == ["a.txt"] and io_utils.is_complete_dir(out)  # no marker on local disk
    assert sorted(os.listdir(tmp_path)) == ["params"]


def test_local_staging_dir_uploads_to_gs(gs, tmp_path):
    with io_utils.local_staging_dir(str(tmp_path / "local_out")) as d:  # local: the folder itself
        assert d == str(tmp_path / "local_out")
    with io_utils.local_staging_dir(f"{gs}/run/hf_export", overwrite=True) as d:
        assert not io_utils.is_remote(d)
        os.makedirs(os.path.join(d, "sub"))
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(b"weights" * 1000)
        with open(os.path.join(d, "sub", "tokenizer.json"), "w") as f:
            f.write("{}")
    out = f"{gs}/run/hf_export"
    assert io_utils.is_complete_dir(out) and not os.path.exists(d)
    assert epath.Path(out, "model.safetensors").read_bytes() == b"weights" * 1000
    assert io_utils.read_text(f"{out}/sub/tokenizer.json") == "{}"


def test_orbax_dir_on_gs_writes_in_place_and_marks_last(gs, monkeypatch):
    """An orbax folder on an object store is written where it will stay (orbax commits its own checkpoints), so a
    7B checkpoint is never copied a second time; `_COMPLETE` comes last, and an overwrite removes it first."""
    out = f"{gs}/run/unlearn/params"
    copies = []
    monkeypatch.setattr(epath.Path, "rename", lambda self, dst: copies.append((self, dst)))
    with io_utils.orbax_dir(out, overwrite=True) as d:
        assert d == out and not io_utils.is_complete_dir(out)
        io_utils.atomic_write_text(f"{d}/params/shard", "x")
    assert io_utils.is_complete_dir(out) and copies == []
    assert _ls(f"{gs}/run/unlearn") == ["params"]  # no temp prefix beside it
    with pytest.raises(RuntimeError):
        with io_utils.orbax_dir(out, overwrite=True) as d:
            assert not io_utils.is_complete_dir(out)  # the old marker went first
            raise RuntimeError("killed mid-save")
    assert not io_utils.is_complete_dir(out)  # a killed save is never taken for a finished one


def test_metrics_log_on_gs(gs):
    from vkd_jax.unlearn.metrics_log import MetricsLogger

    d = f"{gs}/run/unlearn"
    log = MetricsLogger(d, 4, progress=False)
    log.log(1, {"loss": 2.0})
    log.event({"mask_kept_fraction": {"a": 0.5}})
    log.log(2, {"loss": 1.0})
    log.close()
    log = MetricsLogger(d, 4, start_step=2, progress=False)  # a resumed stage appends
    log.log(3, {"loss": 0.5})
    log.close()
    lines = [json.loads(x) for x in io_utils.read_text(f"{d}/metrics.jsonl").splitlines()]
    assert [x.get("step") for x in lines] == [1, None, 2, 3] and lines[-1]["loss"] == 0.5
    events = sorted(epath.Path(d, "tb").iterdir())
    assert len(events) >= 1 and all(p.name.startswith("events.out.tfevents.") for p in events)
    data = events[-1].read_bytes()
    assert int.from_bytes(data[:8], "little") + 16 <= len(data)  # whole TFRecords
    from vkd_jax.report import read_curve

    assert read_curve(d) == ([1, 2, 3], [2.0, 1.0, 0.5])


def test_append_file_syncs_on_flush_and_close(gs):
    path = f"{gs}/run/log.jsonl"
    f = io_utils.AppendFile(path, sync_seconds=3600)
    f.write("a\n")
    f.flush()  # the first flush uploads (never synced before)
    assert io_utils.read_text(path) == "a\n"
    f.write("b\n")
    f.flush()  # throttled: not uploaded yet
    assert io_utils.read_text(path) == "a\n"
    f.close()
    assert io_utils.read_text(path) == "a\nb\n"


def test_report_and_results_on_gs(gs):
    from vkd_jax import report

    w = f"{gs}/run"
    io_utils.atomic_write_text(f"{w}/results.json", json.dumps(FAKE_RESULTS))
    report.write_report(FAKE_RESULTS, w, curves_dirs={"unlearn": f"{w}/unlearn"})
    assert "# Unlearning report: vkd" in io_utils.read_text(f"{w}/report.md")
    assert _ls(f"{w}/plots") == ["forget_vs_retain.png", "relearn.png", "training_curves.png"]
    for p in epath.Path(w, "plots").iterdir():
        assert p.read_bytes()[:4] == b"\x89PNG"


def test_reproduce_comparison_on_gs(gs):
    from vkd_jax import reproduce

    w = f"{gs}/repro"
    for seed in (0, 1):  # finished runs are read back from the work directory, not re-run
        res = {**FAKE_RESULTS, "config": {**FAKE_RESULTS["config"], "seed": seed}}
        io_utils.atomic_write_text(f"{w}/p{seed}/runs/ga_u{seed}/results.json", json.dumps(res))
    summary = reproduce.reproduce(ml_collections.ConfigDict({"seed": 0}), w, ("ga",), (0, 1), (), relearn=False)
    assert summary["ga"]["Forget VQA"] == (30.0, 0.0) and summary["ga"]["n_pipeline"] == 2
    assert "| ga |" in io_utils.read_text(f"{w}/comparison.md")
    assert json.loads(io_utils.read_text(f"{w}/comparison.json"))["pipeline_seeds"] == [0, 1]
    assert _ls(f"{w}/plots") == ["methods.png", "relearn_methods.png"]


def test_eval_cache_written_and_reused_on_gs(gs, monkeypatch):
    from vkd_jax import run_eval
    from vkd_jax.models import hf_io

    calls = []

    class Bench:  # a benchmark whose evaluation is counted
        def evaluate(self, model, ecfg, records):
            calls.append(1)
            records["forget"] = [{"id": "0"}]
            return {"forget": {"vqa_cls_acc": 50.0, "qa_gen_rougeL": math.nan}}
    monkeypatch.setattr(hf_io, "abstract_model", lambda mc: (None, {}))
    monkeypatch.setattr(hf_io, "model_from_flat_params", lambda g, p: None)
    from vkd_jax.config_base import base

    cfg = base()
    cfg.eval.update(dict(max_new_tokens=2, batch_size=1))
    w, data = f"{gs}/run", Bench()
    first = run_eval.evaluate_cached("unlearned", {}, cfg, data, None, w)
    again = run_eval.evaluate_cached("unlearned", {}, cfg, data, None, w)
    assert first == again == {"forget": {"vqa_cls_acc": 50.0, "qa_gen_rougeL": None}} and len(calls) == 1
    assert io_utils.read_json_if_exists(f"{w}/eval/unlearned.json") == first


def test_stage_checkpointer_passes_gs_uri_to_orbax(gs, monkeypatch):
    """The stage checkpointer hands orbax the gs:// URI unchanged (not an abspath of it). Orbax itself is not run:
    on gs:// it needs google-cloud-storage (bucket metadata) and tensorstore's gcs driver, i.e. the network."""
    import orbax.checkpoint as ocp

    from vkd_jax.config_base import base
    from vkd_jax.unlearn.checkpoint import StageCheckpointer

    seen = []
    monkeypatch.setattr(ocp, "CheckpointManager", lambda directory, **kw: seen.append(directory))
    StageCheckpointer(f"{gs}/run/unlearn/ckpt", base().checkpoint)
    assert isinstance(seen[0], epath.Path) and os.fspath(seen[0]) == f"{gs}/run/unlearn/ckpt"
