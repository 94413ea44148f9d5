"""The published vanilla models (vkd_jax/shipped_models): each is what the current code and configs would train
(its fingerprint), re-scores its recorded vanilla metrics, and a damaged, missing or mismatched one is never used
silently."""

import json
import os
import shutil

import pytest

from vkd_jax import shipped

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    """One generated world (and tokenizer) per benchmark, as a run of its seed-0 config builds it."""
    from vkd_jax import run_streams
    from vkd_jax.config_base import load_config

    out = {}
    for spec in shipped.SHIPPED.values():
        cfg = load_config(os.path.join(ROOT, spec))
        b = cfg.data.benchmark
        if b not in out:
            out[b] = run_streams.prepare_data(cfg, str(tmp_path_factory.mktemp(b)))
    return out


@pytest.mark.parametrize("name", sorted(shipped.SHIPPED))
def test_shipped_fingerprint_is_what_the_current_code_makes(name, benches):
    """A change to the world generator, the tokenizer, the model or a pretrain/vanilla stage config fails here
    until the models are rebuilt (`python -m vkd_jax.shipped --rebuild`)."""
    from vkd_jax.config_base import load_config

    folder = os.path.join(shipped.SHIPPED_DIR, name)
    fp = shipped.read_fingerprint(folder)
    assert fp is not None, f"{folder}: not shipped (python -m vkd_jax.shipped --rebuild {name})"
    cfg = load_config(os.path.join(ROOT, shipped.SHIPPED[name]))
    want = shipped.fingerprint(cfg, benches[cfg.data.benchmark])
    assert shipped.fingerprint_diff(fp, want) == [], f"rebuild: python -m vkd_jax.shipped --rebuild {name}"
    assert shipped.check_files(folder, fp) == []


def test_shipped_model_rescores_its_recorded_vanilla_metrics(benches):
    """mllmu_seed0 loaded by the run's own path, evaluated with its config's protocol: every recorded metric."""
    from vkd_jax import run_eval, run_models
    from vkd_jax.config_base import load_config
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    cfg = load_config(os.path.join(ROOT, shipped.SHIPPED["mllmu_seed0"]))
    bench = benches["mllmu"]
    mc = run_models.build_model_config(cfg, bench.tokenizer)
    params, why = shipped.vanilla_from_shipped(cfg, bench, mc)
    assert params is not None, why
    got = bench.evaluate(model_from_flat_params(abstract_model(mc)[0], params), run_eval.eval_config(cfg), {})
    with open(os.path.join(shipped.SHIPPED_DIR, "mllmu_seed0", shipped.METRICS)) as f:
        recorded = json.load(f)
    for s, metrics in recorded.items():
        for m, v in metrics.items():
            if m.endswith(("_acc", "_n")):
                assert got[s][m] == pytest.approx(v, abs=1e-9), (s, m)
    assert recorded["forget"]["vqa_cls_acc"] > 80 and recorded["forget"]["qa_cls_acc"] > 80  # it knows its people


def test_damaged_missing_or_mismatched_shipped_models_are_never_used(benches, tmp_path):
    from vkd_jax import run_models
    from vkd_jax.config_base import load_config

    cfg = load_config(os.path.join(ROOT, shipped.SHIPPED["mllmu_seed0"]))
    bench = benches["mllmu"]
    mc = run_models.build_model_config(cfg, bench.tokenizer)
    d = tmp_path / "zoo"
    shutil.copytree(os.path.join(shipped.SHIPPED_DIR, "mllmu_seed0"), d / "mllmu_seed0")
    weights = d / "mllmu_seed0" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-200:-136] = bytes(64)  # 64 bytes of the last tensor zeroed
    weights.write_bytes(bytes(raw))
    params, why = shipped.vanilla_from_shipped(cfg, bench, mc, shipped_dir=str(d))
    assert params is None and "model.safetensors is damaged" in why and "training" in why
    cfg.vanilla_model = "shipped"
    with pytest.raises(shipped.ShippedModelError, match="model.safetensors is damaged"):
        shipped.vanilla_from_shipped(cfg, bench, mc, shipped_dir=str(d))
    weights.unlink()
    with pytest.raises(shipped.ShippedModelError, match="model.safetensors is missing"):
        shipped.vanilla_from_shipped(cfg, bench, mc, shipped_dir=str(d))
    cfg.vanilla_model = "auto"
    steps = cfg.stages.vanilla.num_steps
    cfg.stages.vanilla.num_steps = steps + 1
    params, why = shipped.vanilla_from_shipped(cfg, bench, mc)
    assert params is None and f"config.stages.vanilla.num_steps: {steps} (shipped) vs {steps + 1} (config)" in why
    cfg.vanilla_model = "train"
    assert shipped.vanilla_from_shipped(cfg, bench, mc)[0] is None


def test_rebuild_command_names_unknown_models(capsys):
    assert shipped.main(["--rebuild", "nope"]) == 2
    assert "unknown shipped models ['nope']" in capsys.readouterr().err
