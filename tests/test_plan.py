"""Memory plan (vkd_jax/plan.py) on the tiny config: the tool lowers and compiles VKD and full-model GA on two
meshes, writes JSON, and its exact per-device byte counts equal the shards a real Trainer puts on a device."""

import json
import os

import jax
import ml_collections
import numpy as np

from vkd_jax import plan
from vkd_jax.models.hf_io import flat_params
from vkd_jax.models.llava import Llava
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn import stages
from vkd_jax.unlearn.methods import make_method
from vkd_jax.unlearn.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _device0_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


def test_plan_tiny_two_meshes(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main() sets the fake device count
    out = tmp_path / "plan.json"
    assert plan.main(["--config", TINY, "--platforms", "gpu1x80,v4-8", "--batches", "4", "--variants",
                      "vkd,ga_full", "--text_len", "8", "--out", str(out)]) == 0
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
        assert vkd["opt_state"] < ga["opt_state"] / 3 and vkd["params_trainable"] < ga["params_trainable"]
        assert ga["params_frozen"] == 0 and vkd["params_frozen"] > 0
    assert rows["v4-8", "ga_full"]["bytes"]["params_trainable"] < rows["gpu1x80", "ga_full"]["bytes"][
        "params_trainable"]  # FSDP shards the params over the 4 chips

    # the same shards, materialised by the engine: a real Trainer with the plan's partition on the v4-8 mesh
    cfg = plan.load_config(TINY)
    mc = stages.model_config_of(cfg)
    pc = stages.partition_cfg(cfg, cfg.stages.unlearn.partition, mc)
    pc.frozen_dtype = "bfloat16"
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=1)), jax.devices()[:4])
    params = flat_params(Llava(mc, rngs=__import__("flax").nnx.Rngs(0)))
    tr = Trainer(mc, params, make_method("vkd", cfg.vkd), partition_cfg=pc, optim_cfg=stages.optim_cfg(
        cfg, cfg.stages.unlearn), num_steps=2, mesh=mesh)
    b = rows["v4-8", "vkd"]["bytes"]
    assert b["params_trainable"] == _device0_bytes(tr.state["trainable"])
    assert b["params_frozen"] == _device0_bytes(tr.frozen)
    assert b["teacher"] == _device0_bytes(tr.aux["teacher"])
    assert b["opt_state"] == _device0_bytes(tr.state["opt_state"])
    total = sum(int(np.prod(s.shape)) for s in jax.eval_shape(lambda: params).values())
    assert d["model"]["params"] == total
