"""Memory plan (vkd_jax/plan.py) on the tiny config: the tool lowers and compiles VKD and full-model GA on two
meshes, writes JSON, and its exact per-device byte counts equal the shards a real Trainer puts on a device."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from vkd_jax import plan
from vkd_jax.config_base import load_config
from vkd_jax.models.hf_io import flat_params
from vkd_jax.models.llava import Llava
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn import stages
from vkd_jax.unlearn.methods import make_method
from vkd_jax.unlearn.train import Trainer

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _device0_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


def test_plan_tiny_two_meshes(tmp_path):
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI sets the fake device count
    r = subprocess.run([sys.executable, "-m", "vkd_jax.plan", "--config", TINY, "--config.seed=3", "--platforms",
                        "gpu1x80,v4-8", "--batches", "4", "--variants", "vkd,ga_full", "--text_len", "8", "--out",
                        str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["seq_len"] == 1 + 16 + 8 and d["param_dtype"] == "float32"
    rows = {(r["platform"], r["variant"]): r for r in d["rows"]}
    assert set(rows) == {(p, v) for p in ("gpu1x80", "v4-8") for v in ("vkd", "ga_full")}
    for r in rows.values():
        b = r["bytes"]
        assert all(b[k] > 0 for k in ("params_trainable", "opt_state", "batch", "argument", "output", "temp"))
        assert b["peak"] == b["argument"] + b["output"] - b["alias"] + b["temp"] and r["fits"]
        # XLA's argument bytes = our exact state/params/batch bytes, less batch fields the step never reads
        ours = sum(b[k] for k in ("params_trainable", "params_frozen", "teacher", "opt_state", "batch"))
        assert ours - b["batch"] <= b["argument"] <= ours
    assert rows["v4-8", "vkd"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    for p in ("gpu1x80", "v4-8"):
        vkd, ga = rows[p, "vkd"]["bytes"], rows[p, "ga_full"]["bytes"]
        # Adam state for the trainable params only: the opt-state ratio is the trainable-param ratio
        assert vkd["opt_state"] / ga["opt_state"] == pytest.approx(
            vkd["params_trainable"] / ga["params_trainable"], rel=0.01)
        assert vkd["params_trainable"] < ga["params_trainable"] / 2
        assert ga["params_frozen"] == 0 and vkd["params_frozen"] > 0
    assert rows["v4-8", "ga_full"]["bytes"]["params_trainable"] < rows["gpu1x80", "ga_full"]["bytes"][
        "params_trainable"]  # FSDP shards the params over the 4 chips

    # the same shards, materialised by the engine: a real Trainer with the plan's partition on the v4-8 mesh
    cfg = load_config(TINY)
    mc = stages.model_config_of(cfg)
    pc = stages.partition_cfg(cfg, stages.stage_partition(cfg, "unlearn"), mc)
    pc.frozen_dtype = "bfloat16"
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=1)), jax.devices()[:4])
    params = flat_params(Llava(mc, rngs=__import__("flax").nnx.Rngs(0)))
    tr = Trainer(mc, params, make_method("vkd", cfg.vkd), partition_cfg=pc, optim_cfg=stages.optim_cfg(
        cfg, cfg.stages.unlearn), num_steps=2, mesh=mesh)
    b = rows["v4-8", "vkd"]["bytes"]
    assert b["params_trainable"] == _device0_bytes(tr.state.trainable)
    assert b["params_frozen"] == _device0_bytes(tr.frozen)
    assert b["teacher"] == _device0_bytes(tr.aux["teacher"])
    assert b["opt_state"] == _device0_bytes(tr.state.opt_state)
    total = sum(int(np.prod(s.shape)) for s in jax.eval_shape(lambda: params).values())
    assert d["model"]["params"] == total


def test_plan_activation_estimate_per_layer(monkeypatch):
    """The analytic activation column: remat keeps exactly each block's inputs per layer (the residual x, RoPE
    cos/sin, the mask), no remat keeps far more; measured as the slope between 2- and 4-layer proxies."""
    cfg = load_config(TINY)
    devices = jax.devices()[:4]
    saved = {}
    for layers in ((2, 2), (4, 2), (2, 4)):
        out = plan.run_plan(cfg, [plan.PLATFORMS["v4-8"]], [4], ["vkd", "vkd_remat"], text_len=8, layers=layers,
                            devices=devices, log=lambda s: None, compile=False)
        assert out["model"]["text_layers"] == layers[0] and out["model"]["vision_layers"] == layers[1]
        for r in out["rows"]:
            b = r["bytes"]
            assert {"saved_activations", "block_working_set", "act_est", "peak_est"} <= set(b) and r["fits"] is None
            assert b["act_est"] == b["saved_activations"] + b["block_working_set"] + b["params_trainable"]
            assert r["fits_est"] == (b["peak_est"] <= r["hbm_bytes"])
            saved[layers, r["variant"]] = b["saved_activations"]
    mc = stages.model_config_of(cfg)
    rows, t, f32 = 1, out["seq_len"], 4  # 4 rows over fsdp=4; the tiny config computes in float32
    text_input = rows * t * (mc.text.hidden_size + 2 * mc.text.head_dim) * f32 + rows * t * t  # x, cos, sin, mask
    vision_input = rows * (mc.vision.num_patches + 1) * mc.vision.hidden_size * f32
    # VKD: the student LLM runs with gradients on the forget stream once, the vision tower on forget and retain
    # (and on the generic images when vkd.b_g > 0)
    image_streams = 3 if float(cfg.vkd.get("b_g", 0.0)) > 0 else 2
    assert saved[(4, 2), "vkd_remat"] - saved[(2, 2), "vkd_remat"] == 2 * text_input
    assert saved[(2, 4), "vkd_remat"] - saved[(2, 2), "vkd_remat"] == 2 * image_streams * vision_input
    for a, b in (((4, 2), (2, 2)), ((2, 4), (2, 2))):
        assert saved[a, "vkd"] - saved[b, "vkd"] > 5 * (saved[a, "vkd_remat"] - saved[b, "vkd_remat"])


def test_activation_pins_follow_the_batch_sharding():
    """Inside a train step the model pins its activations to the batch sharding (data x fsdp), so GSPMD
    all-gathers FSDP weights instead of the batch; outside one (inference) the pins are absent."""
    from vkd_jax.models.layers import activation_sharding
    cfg = load_config(TINY)
    mc = stages.model_config_of(cfg)
    model = Llava(mc, rngs=__import__("flax").nnx.Rngs(0))
    b = plan.dummy_batch(mc, 4, 8)
    def fwd():
        return model.forward(b["input_ids"], b["pixel_values"], b["attention_mask"])
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=1)), jax.devices()[:4])
    with activation_sharding(pt.activation_shardings(mesh)):
        pinned = str(jax.make_jaxpr(fwd)())
    assert "sharding_constraint" not in str(jax.make_jaxpr(lambda: fwd())())  # a new trace, outside
    n_blocks = mc.vision.num_hidden_layers + mc.text.num_hidden_layers
    assert pinned.count("sharding_constraint") >= 2 * n_blocks
    assert "spec=P('fsdp', None, None)" in pinned
    spec = pt.activation_shardings(mesh)(("batch", None, "mlp"), (4, 25, 384)).spec
    assert tuple(spec) == ("fsdp", None, None)  # tensor=1: mlp unsharded; batch over fsdp
