"""The whole pipeline's plan (vkd_jax/plan_pipeline.py): the stages main runs for each config and variant, the
plan's JSON, every stage of configs/llava7b.py and llava13b.py on the platforms they are meant for, and the
preflight that stops a run which cannot fit before it writes anything."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest
from conftest import run_main

from vkd_jax import plan_costs as pc
from vkd_jax import plan_pipeline as pp
from vkd_jax import preflight as pf
from vkd_jax.config_base import load_config
from vkd_jax.plan import PLATFORMS
from vkd_jax.reproduce import apply_overrides
from vkd_jax.run_models import build_model_config

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
LLAVA7B = os.path.join(ROOT, "configs", "llava7b.py")
LLAVA13B = os.path.join(ROOT, "configs", "llava13b.py")
METHODS = ("vkd", "ga", "gd", "kl", "npo", "idk", "mmunlearner")


def names(cfg):
    return [s.name for s in pp.pipeline_stages(cfg)]


def test_pipeline_stages_follow_the_config():
    tiny = load_config(TINY)
    assert names(tiny) == ["pretrain", "vanilla", "unlearn", "eval", "relearn@0.1", "relearn@0.25", "relearn@0.5",
                           "probe"]
    by = {s.name: s for s in pp.pipeline_stages(tiny)}
    assert by["unlearn"].repeats == 10 and by["relearn@0.5"].repeats == 20  # splits=0: 10 splits; 2 attacks at 1/2
    assert by["eval"].repeats == 20 and by["relearn@0.1"].repeats == 10
    assert "reference" in names(load_config(TINY + ":method=npo"))  # NPO's retain-only reference
    assert "reference" not in names(apply_overrides(load_config(TINY + ":method=npo"), {"npo.reference": "vanilla"}))
    assert "masks" in names(load_config(TINY + ":method=mmunlearner"))
    assert "masks" in names(apply_overrides(tiny, {"stages.unlearn.use_masks": True}))
    assert "reference" in names(apply_overrides(load_config(TINY + ":benchmark=clear"),
                                                {"eval.clear_reading": "official"}))
    assert names(apply_overrides(tiny, {"export_hf": True, "eval.probe": False}))[-2:] == ["relearn@0.5", "export"]
    big = load_config(LLAVA7B)  # a download: no pretraining; one forget split; the model exported
    assert names(big) == ["vanilla", "unlearn", "eval", "relearn@0.1", "relearn@0.25", "relearn@0.5", "probe",
                          "export"]
    assert {s.name: s.steps for s in pp.pipeline_stages(big)}["vanilla"] == 2000


def test_plan_pipeline_cli_tiny(tmp_path):
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI sets the fake device count
    r = subprocess.run([sys.executable, "-m", "vkd_jax.plan", "--config", TINY + ":method=npo", "--pipeline",
                        "--platforms", "gpu1x80,v4-8", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    stages = names(load_config(TINY + ":method=npo"))
    assert [(s["platform"], s["stage"]) for s in d["stages"]] == [(p, n) for p in ("gpu1x80", "v4-8")
                                                                  for n in stages]
    for s in d["stages"]:
        assert {"platform", "stage", "peak_gib", "hbm_gib", "fits", "seconds", "flops", "bytes_moved"} <= set(s)
        assert s["fits"] and 0 < s["peak_gib"] < 2 and s["seconds"] > 0
        if s["stage"] in ("pretrain", "vanilla", "reference", "unlearn") or s["stage"].startswith("relearn"):
            assert s["flops"] > 0 and s["bytes_gib"]["opt_state"] > 0
    for p in ("gpu1x80", "v4-8"):
        rows = [s for s in d["stages"] if s["platform"] == p]
        assert d["totals"][p]["seconds"] == pytest.approx(sum(s["seconds"] for s in rows))
        assert d["totals"][p]["fits"] and d["totals"][p]["too_big"] == []
    row = {(s["platform"], s["stage"]): s for s in d["stages"]}
    # NPO carries a frozen reference (aux); the same train step on 4 data-parallel chips: a quarter of the batch
    assert row["gpu1x80", "unlearn"]["bytes_gib"]["teacher"] > 0
    assert row["v4-8", "unlearn"]["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert row["v4-8", "unlearn"]["bytes_gib"]["batch"] < row["gpu1x80", "unlearn"]["bytes_gib"]["batch"]
    assert row["gpu1x80", "unlearn"]["flops"] > row["gpu1x80", "relearn@0.1"]["flops"] / 2 > 0


def test_plan_cli_refuses_a_bad_config_in_one_line_and_needs_no_files(tmp_path):
    """The 7B config plans without its weights or data (nothing of hf_dir / manual_dir is read), but a bad field
    is one `error:` line and exit 1, before any planning; a variant field on the command line rebuilds the file."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    llava7b = os.path.join(ROOT, "configs", "llava7b.py")
    r = subprocess.run([sys.executable, "-m", "vkd_jax.plan", "--config", llava7b, "--pipeline", "--platforms",
                        "gpu1x80", "--config.stages.unlearn.num_steps=-2", "--config.data.benchmark=nope",
                        "--out", str(tmp_path / "p.json")], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("I", "W"))]
    assert err[0].startswith("error: config has 2 bad fields") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "config.stages.unlearn.num_steps=-2" in r.stderr and "config.data.benchmark='nope'" in r.stderr
    assert not (tmp_path / "p.json").exists()


def test_layer_slopes_equal_the_whole_model_trace():
    """The plan traces 2-3 layer proxies and extrapolates: on a 6 + 5 layer model the extrapolated saved
    activations and matmul FLOPs of VKD's and relearning's steps equal the whole model's, exactly."""
    from vkd_jax.plan import plan_row

    base = apply_overrides(load_config(TINY), {"model.text_config.num_hidden_layers": 6,
                                               "model.vision_config.num_hidden_layers": 5})
    last2 = apply_overrides(base, {"method_partition.vkd": "visual_last_k", "partition.vit_last_k": 2})
    p = PLATFORMS["gpu1x80"]
    mesh = pp.mesh_of(base, p, jax.devices())
    for cfg, stage in ((base, "unlearn"), (base, "relearn"), (last2, "unlearn")):
        mc = build_model_config(cfg)
        preset = pp.stage_step(cfg, mc, stage, mesh, 24).preset

        def saved(m, cfg=cfg, stage=stage):
            return plan_row(pp.stage_step(cfg, m, stage, mesh, 24), p, 32, stage)["bytes"]["saved_activations"]

        def flops(m, cfg=cfg, stage=stage):
            return pc.step_flops(pp.stage_step(cfg, m, stage, mesh, 24))
        for f in (saved, flops):
            assert pc.by_layer_slopes(mc, f, pc.base_vision(cfg, preset)) == f(mc) > 0, (stage, preset)


def _plan(cfg, stage: str, platform: str, memo=None) -> dict:
    mc = build_model_config(cfg)
    s = {x.name: x for x in pp.pipeline_stages(cfg)}[stage]
    return pp.plan_stage(cfg, mc, s, PLATFORMS[platform], jax.devices(), pc.model_sizes(mc),
                         1 + mc.image_seq_length + 128, 128, {} if memo is None else memo, with_time=False)


@pytest.mark.parametrize("config", [LLAVA7B, LLAVA13B])
def test_large_configs_fit_where_they_are_meant_to(config):
    """Every stage of every method of llava7b fits one 80 GB GPU and a v4-8; llava13b (VKD, NPO with its
    reference copy, MMUnlearner with its masks) fits one 80 GB GPU, and a v4-8 with its FSDP mesh but for
    MMUnlearner's masks, which hold the whole model on one chip (the plan's exact state and analytic activations,
    no compilation)."""
    memo: dict = {}
    for method in METHODS if config == LLAVA7B else ("vkd", "npo", "mmunlearner"):
        cfg = load_config(f"{config}:method={method}")
        for p in ("gpu1x80", "v4-8"):
            for s in pp.pipeline_stages(cfg):
                if s.name in ("pretrain", "vanilla", "reference", "eval", "probe", "export") and method != "vkd":
                    continue  # the same for every method: checked once
                r = _plan(cfg, s.name, p, memo)
                want = not (config == LLAVA13B and p == "v4-8" and s.name == "masks")
                assert r["fits"] == want, (config, method, p, r)
    cfg = load_config(config)
    rl = _plan(cfg, "relearn@0.1", "gpu1x80")
    assert rl["partition"] == "visual_lora_llm" and rl["bytes_gib"]["resident"] == 0  # the others on the host
    # with several processes the run keeps vanilla and the unlearned model on the devices: counted
    four_hosts = {**PLATFORMS, "v4-8": dataclasses.replace(PLATFORMS["v4-8"], hosts=2)}
    mc = build_model_config(cfg)
    s = {x.name: x for x in pp.pipeline_stages(cfg)}["relearn@0.1"]
    r2 = pp.plan_stage(cfg, mc, s, four_hosts["v4-8"], jax.devices(), pc.model_sizes(mc), 1 + 576 + 128, 128, {},
                       with_time=False)
    assert r2["bytes_gib"]["resident"] == pytest.approx(2 * pc.model_sizes(mc)["bytes"] / 2 ** 30, rel=1e-5)
    # the stronger attack (every parameter) does not fit one 80 GB GPU: the plan says so, and what would help
    full = apply_overrides(cfg, {"stages.relearn.partition": "full"})
    r = _plan(full, "relearn@0.1", "gpu1x80")
    assert not r["fits"] and r["bytes_gib"]["opt_state"] > 40
    assert any("stages.relearn.partition" in f for f in pf.fixes_for(full, r))
    # 8 GPUs: the global batch of 4 does not split 8 ways; the plan says so and names the mesh that runs
    r = _plan(cfg, "unlearn", "gpu8x80")
    assert not r["fits"] and "does not divide" in r["error"]
    mesh = "config.mesh.data=4 config.mesh.fsdp=1" if config == LLAVA7B else "config.mesh.data=1 config.mesh.fsdp=4"
    assert f"{mesh} config.mesh.tensor=2" in pf.fixes_for(cfg, r)[0]


def test_gradient_accumulation_plans_one_microbatch_at_a_time():
    cfg = load_config(TINY + ":splits=1")
    one, two = _plan(cfg, "unlearn", "gpu1x80"), _plan(apply_overrides(cfg, {"optim.grad_accum": 2}), "unlearn",
                                                       "gpu1x80")
    a, b = one["bytes_gib"], two["bytes_gib"]
    assert b["saved_activations"] == pytest.approx(a["saved_activations"] / 2, rel=1e-3)
    assert b["block_working_set"] < a["block_working_set"] and b["opt_state"] == a["opt_state"]
    assert two["peak_gib"] < one["peak_gib"]


def test_cost_formulas_by_hand():
    """The evaluation's memory and the train step's traffic, against the numbers written out for LLaVA-1.5-7B."""
    cfg = load_config(LLAVA7B)
    mc = build_model_config(cfg)
    sizes = pc.model_sizes(mc)
    assert sizes["bytes"] == 2 * sizes["count"] and 7.0e9 < sizes["count"] < 7.1e9  # fp16 storage
    assert pc.eval_len(705) == 768 and pc.eval_len(64) == 64
    b = pc.eval_bytes(mc, sizes, cfg, 705)  # batch 8, 50 new tokens, 32 layers x 32 heads x 128, bf16
    assert b["kv_cache"] == 2 * 32 * 8 * (768 + 50) * 32 * 128 * 2
    assert b["attention"] == 2 * 8 * 32 * 768 * 818 * 4 and b["params"] == sizes["bytes"]
    g = 2 ** 30
    step = {"params_trainable": 1 * g, "params_frozen": 10 * g, "teacher": 1 * g, "saved_activations": 3 * g,
            "opt_state": 2 * g}
    assert pc.step_bytes_moved(step, "full") == (3 * 11 + 1 + 2 * 3 + 2 * (2 + 2)) * g
    assert pc.step_bytes_moved(step, "none") == (2 * 11 + 1 + 2 * 3 + 2 * (2 + 2)) * g


def test_preflight_stops_a_run_that_cannot_fit_before_any_work(tmp_path):
    cfg = load_config(TINY + ":splits=1")
    rows = pf.preflight(apply_overrides(cfg, {"preflight_device_gib": 80.0}))
    assert rows and all(r["fits"] for r in rows)
    assert pf.preflight(cfg) == []  # CPU devices report no memory: nothing to check against
    with pytest.raises(pf.PreflightError, match="stage 'pretrain' needs"):
        pf.preflight(apply_overrides(cfg, {"preflight_device_gib": 0.01}))
    assert pf.preflight(apply_overrides(cfg, {"preflight_device_gib": 0.01, "preflight": False})) == []
    work = tmp_path / "w"
    r = run_main("tiny.py:splits=1", work, "--config.preflight_device_gib=0.01", env={"XLA_FLAGS": None},
                 timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: preflight: stage 'pretrain' needs"), r.stderr[-2000:]
    assert "config.data.batch_size" in err[0] and "Traceback" not in r.stderr
    assert not work.exists()  # stopped before anything was written
