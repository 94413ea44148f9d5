"""Unlearning engine on 8 fake CPU devices: partition, VKD invariants, masks, losses vs numpy, sharding,
kill-and-resume, NaN guard, gradient accumulation, LoRA, every method's step, TensorBoard framing."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vkd_jax.config_base import load_config
from vkd_jax.models.hf_io import abstract_model, model_from_flat_params
from vkd_jax.unlearn import masks as masks_lib
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import common, make_method, method_config
from vkd_jax.unlearn.methods.npo import npo_loss
from vkd_jax.unlearn.train import Trainer

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _s(params):
    return {k: np.asarray(v) for k, v in params.items()}


def _batches(ukit, seed=0, n=1):
    rng = np.random.default_rng(seed)
    return [{"forget": ukit.make_batch(rng), "retain": ukit.make_batch(rng)} for _ in range(n)]


def _text_logits(cfg, params, batch):
    graphdef, _ = abstract_model(cfg)
    m = model_from_flat_params(graphdef, params)
    return np.asarray(m(batch["input_ids"], None, batch["attention_mask"].astype(bool)))


def test_partition_rules_cover_every_param(ukit):
    cfg = ukit.tiny_config()
    _, abstract = abstract_model(cfg)
    rules = (("^(projector|vision_tower|lm_head)/", "train"), ("^language_model/(layers|norm)", "frozen"))
    with pytest.raises(pt.PartitionError, match="language_model/embed_tokens/embedding"):
        pt.make_partition(abstract, ukit.pcfg("none", extra_rules=rules))
    part = pt.make_partition(abstract, ukit.pcfg("visual_last_k", vit_last_k=1))
    train = set(part.trainable_keys)
    assert "vision_tower/layers/1/mlp/fc1/kernel" in train and "projector/linear_2/bias" in train
    assert "vision_tower/layers/0/mlp/fc1/kernel" not in train
    assert not any(k.startswith(("language_model", "lm_head")) for k in train)
    lora = pt.make_partition(abstract, ukit.pcfg("lora_llm"))
    assert lora.rules["language_model/layers/0/self_attn/q_proj/kernel"] == "lora"
    assert lora.shapes["language_model/layers/0/mlp/up_proj/kernel/lora_a"].shape == (32, 4)
    assert all(k.endswith(("lora_a", "lora_b")) for k in lora.trainable_keys)
    # the large configs' relearning attack: the visual side at full rank and the baselines' LoRA on the LLM
    both = pt.make_partition(abstract, ukit.pcfg("visual_lora_llm"))
    assert {k for k, r in both.rules.items() if r == "train"} == {
        k for k in abstract if k.startswith(("vision_tower/", "projector/"))}
    assert {k for k, r in both.rules.items() if r == "lora"} == {k for k, r in lora.rules.items() if r == "lora"}
    assert both.rules["lm_head/kernel"] == both.rules["language_model/embed_tokens/embedding"] == "frozen"
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    spec = pt.logical_to_spec(("embed", "mlp"), (32, 64), mesh)
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_fp16_storage_trains_fp32_masters_and_keeps_frozen_params_bitwise(ukit):
    """Params stored in fp16 (llava-hf's dtype): the trained ones become fp32 masters with fp32 Adam state, the
    frozen LLM stays fp16 (no copy), and the stage's params come back in fp16 with every frozen tensor bitwise the
    input's; LoRA adapters train in fp32 too."""
    from flax import nnx

    from vkd_jax.models.hf_io import flat_params
    from vkd_jax.models.llava import Llava

    cfg = ukit.tiny_config().replace(param_dtype="float16")
    params = flat_params(Llava(cfg, rngs=nnx.Rngs(0)))
    tr = Trainer(cfg, params, make_method("vkd", method_config("vkd", taps=("projector",), b_r=1.0)),
                 partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(), num_steps=2)
    assert {str(v.dtype) for v in tr.state.trainable.values()} == {"float32"}
    assert {str(v.dtype) for v in tr.frozen.values()} == {"float16"}
    assert {str(x.dtype) for x in jax.tree.leaves(tr.state.opt_state) if np.ndim(x) > 0} == {"float32"}
    for b in _batches(ukit, n=2):
        tr.step(b)
    after, orig = _s(tr.params()), _s(params)
    assert {str(v.dtype) for v in after.values()} == {"float16"}
    moved = [k for k in orig if orig[k].tobytes() != after[k].tobytes()]
    assert moved and all(k.startswith(("vision_tower", "projector")) for k in moved)
    lora = Trainer(cfg, params, make_method("ga"), partition_cfg=ukit.pcfg("lora_llm"), optim_cfg=ukit.ocfg(),
                   num_steps=1)
    assert {str(v.dtype) for v in lora.state.trainable.values()} == {"float32"}
    lora.step(_batches(ukit)[0])
    assert {str(v.dtype) for v in _s(lora.params()).values()} == {"float16"}


def test_losses_match_numpy(ukit):
    rng = np.random.default_rng(0)
    b = ukit.make_batch(rng, b=3, t=10, image=False)
    logits = rng.normal(size=(3, 10, 64)).astype(np.float32)
    t_logits = rng.normal(size=(3, 10, 64)).astype(np.float32)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    lpt = t_logits - np.log(np.exp(t_logits).sum(-1, keepdims=True))
    tok = np.take_along_axis(lp[:, :-1], b["labels"][:, 1:, None], -1)[..., 0]
    m = b["loss_mask"][:, 1:]
    np.testing.assert_allclose(common.nll(logits, b), -(tok * m).sum() / m.sum(), rtol=1e-5)
    np.testing.assert_allclose(common.nll(logits, b, bound=4.3), np.minimum(-tok, 4.3)[m > 0].mean(), rtol=1e-5)
    seq = (tok * m).sum(1)
    np.testing.assert_allclose(common.seq_logp(logits, b), seq, rtol=1e-5)
    kl = (np.exp(lpt[:, :-1]) * (lpt[:, :-1] - lp[:, :-1])).sum(-1)
    np.testing.assert_allclose(common.kl_teacher_student(t_logits, logits, b), (kl * m).sum() / m.sum(), rtol=1e-5)
    ref = seq + rng.normal(size=3)
    np.testing.assert_allclose(npo_loss(jnp.asarray(seq), jnp.asarray(ref), 0.4),
                               (2 / 0.4) * np.mean(np.log1p(np.exp(0.4 * (seq - ref)))), rtol=1e-5)
    s, t = rng.normal(size=(2, 5, 8)).astype(np.float32), rng.normal(size=(2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(common.feature_distance(s, t, "mse"), np.mean((s - t) ** 2), rtol=1e-5)
    cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    np.testing.assert_allclose(common.feature_distance(s, t, "cosine"), np.mean(1 - cos), rtol=1e-5)
    a = np.abs(s - t)
    np.testing.assert_allclose(common.feature_distance(s, t, "smooth_l1"),
                               np.mean(np.where(a < 1, 0.5 * a * a, a - 0.5)), rtol=1e-5)


def test_vkd_keeps_frozen_params_and_text_logits_bitwise(ukit):
    cfg, params = ukit.tiny_params()
    text = ukit.make_batch(np.random.default_rng(9), image=False)
    before = _text_logits(cfg, params, text)
    vkd_cfg = method_config("vkd", taps=("projector", "vision:-1", "llm:1"), a_f=1.0, a_r=0.5, b_r=10.0, b_f=0.5,
                            forget_kd="push")
    tr = Trainer(cfg, params, make_method("vkd", vkd_cfg), partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(),
                 num_steps=3)
    for b in _batches(ukit, n=3):
        m = tr.step(b)
    assert np.isfinite(float(m["loss"])) and float(m["kd_retain"]) > 0
    after = _s(tr.params())
    orig = _s(params)
    moved = [k for k in orig if not np.array_equal(orig[k], after[k])]
    assert moved and all(k.startswith(("vision_tower", "projector")) for k in moved)
    for k in orig:
        if k.startswith(("language_model", "lm_head")):
            assert np.array_equal(orig[k], after[k]), k
    np.testing.assert_array_equal(_text_logits(cfg, tr.params(), text), before)
    # no optimizer state for frozen params: every param-shaped leaf sits under a trainable key
    keys = set()
    for path, _ in jax.tree_util.tree_leaves_with_path(tr.state.opt_state):
        keys |= {p.key for p in path if isinstance(getattr(p, "key", None), str)}
    assert keys and keys <= set(tr.part.trainable_keys)
    assert not any(k.startswith("language_model") for k in keys)


def test_saliency_mask_freezes_masked_weights(ukit):
    cfg, params = ukit.tiny_params()
    part = pt.make_partition(abstract_model(cfg)[1], ukit.pcfg("visual"))
    trainable, frozen = pt.split_params(_s(params), part)
    ctx = common.Ctx(abstract_model(cfg)[0], part)
    bs = _batches(ukit, n=2)
    ff = masks_lib.fisher(ctx, trainable, frozen, [b["forget"] for b in bs])
    fr = masks_lib.fisher(ctx, trainable, frozen, [b["retain"] for b in bs])
    top = masks_lib.ratio_masks(ff, fr, top_p=0.3)
    frac = masks_lib.kept_fraction(top)
    assert abs(frac["all"] - 0.3) < 0.01 and "projector" in frac and "vision_tower/layers/1" in frac
    masks = masks_lib.ratio_masks(ff, fr, tau=1.0)
    assert 0 < masks_lib.kept_fraction(masks)["all"] < 1
    tr = Trainer(cfg, params, make_method("ga"), partition_cfg=ukit.pcfg("visual"),
                 optim_cfg=ukit.ocfg(weight_decay=0.1),
                 num_steps=3, masks=masks)
    for b in _batches(ukit, n=2):
        tr.step(b)
    after, orig = _s(tr.params()), _s(params)
    n_moved = 0
    for k, m in masks.items():
        m = np.asarray(m)
        np.testing.assert_array_equal(after[k][~m], orig[k][~m])
        n_moved += int((after[k][m] != orig[k][m]).sum())
    assert n_moved > 0
    saved = jax.tree.leaves(tr.state.opt_state[-1].mask)
    assert len(saved) == len(masks)  # the mask rides in the optimizer state, hence in every checkpoint


def test_sharded_step_equals_single_device(ukit):
    assert jax.device_count() == 8
    cfg, params = ukit.tiny_params()
    outs = []
    for mesh in (pt.make_mesh(None, jax.devices()[:1]),
                 pt.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))):
        tr = Trainer(cfg, params, make_method("gd"), partition_cfg=ukit.pcfg("full"), optim_cfg=ukit.ocfg(lr=1e-3),
                     num_steps=2, mesh=mesh)
        for b in _batches(ukit, n=2):
            m = tr.step(b)
        outs.append((_s(tr.params()), float(m["loss"])))
    sharded = tr.state.trainable["language_model/layers/0/mlp/up_proj/kernel"].sharding
    assert sharded.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
    for k in outs[0][0]:
        np.testing.assert_allclose(outs[0][0][k], outs[1][0][k], rtol=1e-4, atol=1e-6, err_msg=k)


def _stage_cfg(ukit, tmp_path, steps=4):
    c = load_config(os.path.join(ROOT, "configs", "tiny.py"))
    cfg = ukit.tiny_config()
    c.model = ml_collections.ConfigDict(json.loads(cfg.hf_config_json)) if cfg.hf_config_json else c.model
    c.stages.unlearn.num_steps = steps
    c.checkpoint.every_steps = 2
    c.checkpoint.log_every = 1
    c.mesh.data = 1
    return c


def test_kill_and_resume_is_bitwise_and_restores_onto_another_mesh(tmp_path, ukit, monkeypatch):
    from vkd_jax.unlearn.metrics_log import MetricsLogger
    from vkd_jax.unlearn.stages import run_stage
    resumed_at = []
    monkeypatch.setattr(MetricsLogger, "resume_at", lambda self, step: resumed_at.append(step))
    cfg, params = ukit.tiny_params()
    c = _stage_cfg(ukit, tmp_path)
    one = pt.make_mesh(None, jax.devices()[:1])
    streams = lambda: {"forget": ukit.Stream(1), "retain": ukit.Stream(2), "generic": ukit.Stream(3)}  # noqa: E731
    full = run_stage("unlearn", c, str(tmp_path / "a"), params, streams(), model_config=cfg, mesh=one,
                     progress=False)
    killed = run_stage("unlearn", c, str(tmp_path / "b"), params, streams(), model_config=cfg, mesh=one,
                       stop_after=3, progress=False)  # "killed" after step 3; the last checkpoint is step 2
    assert not os.path.isdir(tmp_path / "b" / "unlearn" / "params")
    resumed = run_stage("unlearn", c, str(tmp_path / "b"), params, streams(), model_config=cfg, mesh=one,
                        progress=False)
    assert resumed_at == [0, 0, 2]  # the resumed run's rates count from its checkpoint, not from step 0
    a, b, k = _s(full.params), _s(resumed.params), _s(killed.params)
    assert any(not np.array_equal(a[x], k[x]) for x in a)
    for x in a:
        np.testing.assert_array_equal(a[x], b[x], err_msg=x)
    log = [json.loads(x) for x in open(tmp_path / "a" / "unlearn" / "metrics.jsonl")]
    assert {"loss", "grad_norm", "param_norm", "update_norm"} <= set(log[-1])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "a" / "unlearn" / "tb"))
    # the step-4 checkpoint of run "a" restores onto a 2x2x2 mesh with equal values
    mesh8 = pt.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    from vkd_jax.unlearn.checkpoint import StageCheckpointer
    tr = Trainer(cfg, params, make_method("vkd", c.vkd), partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(),
                 num_steps=4, mesh=mesh8)
    ck = StageCheckpointer(str(tmp_path / "a" / "unlearn" / "ckpt"), c.checkpoint)
    assert ck.latest_step() == 4
    state, data = ck.restore(tr.built.abstract_state, tr.built.state_shardings)
    assert data["forget"] == {"i": 4} and int(state.step) == 4
    w = state.trainable["projector/linear_1/kernel"]
    assert len(w.sharding.device_set) == 8
    for x, v in state.trainable.items():
        np.testing.assert_array_equal(np.asarray(v), a[x], err_msg=x)


def test_a_stopping_rule_ends_the_stage_where_it_says_and_a_resume_agrees(tmp_path, ukit):
    """`check` (every 2 steps) stops an 8-step unlearn stage at step 4: the saved params are the step-4 params of
    an uninterrupted run, done.json says so, and a run killed after step 4 (its step-4 checkpoint written) asks the
    rule again on resuming and stops there too."""
    from vkd_jax.unlearn.stages import run_stage
    cfg, params = ukit.tiny_params()
    c = _stage_cfg(ukit, tmp_path, steps=8)
    one = pt.make_mesh(None, jax.devices()[:1])
    streams = lambda: {"forget": ukit.Stream(1), "retain": ukit.Stream(2), "generic": ukit.Stream(3)}  # noqa: E731
    asked = []

    def rule(step, p):
        asked.append(step)
        return step >= 4

    four = run_stage("unlearn", c, str(tmp_path / "a"), params, streams(), model_config=cfg, mesh=one,
                     num_steps=4, progress=False)
    stopped = run_stage("unlearn", c, str(tmp_path / "b"), params, streams(), model_config=cfg, mesh=one,
                        progress=False, check=(2, rule))
    assert asked == [2, 4]
    done = json.loads((tmp_path / "b" / "unlearn" / "done.json").read_text())
    assert (done["steps"], done["of"], done["stopped_by_rule"]) == (4, 8, True)
    for x, v in _s(four.params).items():
        np.testing.assert_array_equal(v, _s(stopped.params)[x], err_msg=x)
    # killed after the rule stopped it at 4 (checkpoint 4 sealed) but before the stage was saved: a rerun asks the
    # rule at step 4 again instead of training on to 8
    run_stage("unlearn", c, str(tmp_path / "k"), params, streams(), model_config=cfg, mesh=one, stop_after=5,
              progress=False)  # the last checkpoint: step 4
    asked.clear()
    resumed = run_stage("unlearn", c, str(tmp_path / "k"), params, streams(), model_config=cfg, mesh=one,
                        progress=False, check=(2, rule))
    assert asked == [4]
    for x, v in _s(four.params).items():
        np.testing.assert_array_equal(v, _s(resumed.params)[x], err_msg=x)


def test_nan_guard_skips_counts_and_aborts(ukit):
    cfg, params = ukit.tiny_params()
    tr = Trainer(cfg, params, make_method("ga"), partition_cfg=ukit.pcfg("projector"),
                 optim_cfg=ukit.ocfg(max_skipped_steps=1),
                 num_steps=5)
    bad = _batches(ukit, n=1)[0]
    bad["forget"]["pixel_values"][:] = np.nan
    before = _s(tr.params())
    tr.step(bad)
    np.testing.assert_array_equal(_s(tr.params())["projector/linear_1/kernel"], before["projector/linear_1/kernel"])
    assert int(tr.state.skipped) == 1 and int(tr.state.step) == 1
    tr.check_skipped()
    tr.step(bad)
    with pytest.raises(FloatingPointError, match="max_skipped_steps=1"):
        tr.check_skipped()


def test_grad_accumulation_matches_full_batch(ukit):
    cfg, params = ukit.tiny_params()
    res = []
    for accum in (1, 2):
        tr = Trainer(cfg, params, make_method("gd"), partition_cfg=ukit.pcfg("projector"),
                     optim_cfg=ukit.ocfg(grad_accum=accum, clip_norm=0.0), num_steps=1)
        m = tr.step(_batches(ukit)[0])
        res.append((float(m["grad_norm"]), _s(tr.state.trainable)))
    # per-microbatch token means differ from one batch mean only through unequal answer counts: none here
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-4)
    for k in res[0][1]:
        np.testing.assert_allclose(res[0][1][k], res[1][1][k], rtol=1e-4, atol=1e-6)


def test_lora_ga_moves_only_adapters_and_merges(ukit):
    cfg, params = ukit.tiny_params()
    tr = Trainer(cfg, params, make_method("ga"), partition_cfg=ukit.pcfg("lora_llm"), optim_cfg=ukit.ocfg(lr=1e-2),
                 num_steps=2)
    for b in _batches(ukit, n=2):
        tr.step(b)
    st = tr.state.trainable
    assert set(st) == set(tr.part.trainable_keys)
    k = "language_model/layers/1/mlp/down_proj/kernel"
    a, b_ = np.asarray(st[k + "/lora_a"]), np.asarray(st[k + "/lora_b"])
    assert np.abs(b_).max() > 0
    merged, orig = _s(tr.params()), _s(params)
    np.testing.assert_allclose(merged[k], orig[k] + 2.0 * a @ b_, rtol=1e-5, atol=1e-6)
    for x in orig:
        if tr.part.rules[x] == "frozen":
            np.testing.assert_array_equal(merged[x], orig[x], err_msg=x)


@pytest.mark.parametrize("name", ["kl", "npo", "idk", "mmunlearner"])
def test_every_method_steps(name, ukit):
    cfg, params = ukit.tiny_params()
    tok = None
    if name == "idk":
        class Tok:
            eos_id, pad_id = 2, 0

            def encode(self, text, add_bos=True):
                return [5, 6, 7]
        tok = Tok()
    method = make_method(name, tokenizer=tok)
    masks = None
    if method.needs_masks:
        part = pt.make_partition(abstract_model(cfg)[1], ukit.pcfg("projector"))
        masks = {k: np.arange(np.prod(part.shapes[k].shape)).reshape(part.shapes[k].shape) % 2 == 0
                 for k in part.trainable_keys}
    tr = Trainer(cfg, params, method, partition_cfg=ukit.pcfg("projector"), optim_cfg=ukit.ocfg(), num_steps=2,
                 masks=masks,
                 reference=params)
    ms = [jax.device_get(tr.step(b)) for b in _batches(ukit, n=2)]
    assert all(np.isfinite(m["loss"]) for m in ms)
    if name == "npo":  # reference == vanilla: the first log-ratio is exactly 0, loss (2/β) log 2
        np.testing.assert_allclose(ms[0]["loss"], 2 / 0.4 * np.log(2), rtol=1e-5)
    if name == "mmunlearner":  # step 0 forget (masked ascent), step 1 retain (unmasked)
        assert ms[0]["forget_phase"] == 1 and ms[1]["forget_phase"] == 0
    if name == "idk":
        b = method.host_transform("forget", ukit.make_batch(np.random.default_rng(0)))
        row = b["input_ids"][0]
        assert list(row[b["loss_mask"][0] > 0]) == [5, 6, 7, 2]


def test_random_affine_poses():
    from vkd_jax.unlearn.methods.vkd import random_affine

    x = np.zeros((3, 3, 16, 16), np.float32)
    x[:, :, 6:10, 2:14] = 1.0  # a horizontal bar
    key = jax.random.PRNGKey(0)
    np.testing.assert_allclose(np.asarray(random_affine(x, key, 0.0, 0.0, 0.0)), x, atol=1e-5)  # no pose: itself
    y = np.asarray(random_affine(x, key, 30.0, 0.1, 0.1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(np.abs(y[i] - x[i]).max() > 0.2 for i in range(3))  # every example moved
    assert np.abs(y[0] - y[1]).max() > 0.2  # each its own pose
    np.testing.assert_array_equal(y, np.asarray(random_affine(x, key, 30.0, 0.1, 0.1)))  # deterministic in the key
    mass = y.sum(axis=(2, 3)) / x.sum(axis=(2, 3))
    assert np.all((mass > 0.7) & (mass < 1.4))  # a pose, not a different picture


def test_vkd_augmentation_changes_the_forget_batch_each_step(ukit):
    cfg, params = ukit.tiny_params()
    runs = {}
    for aug in ("none", "affine"):
        mcfg = method_config("vkd", augment=aug, aug_rotation=20.0, b_f=1.0, forget_kd="target")
        tr = Trainer(cfg, params, make_method("vkd", mcfg), partition_cfg=ukit.pcfg("projector"),
                     optim_cfg=ukit.ocfg(), num_steps=2, seed=0)
        runs[aug] = [jax.device_get(tr.step(b)) for b in _batches(ukit, n=2)]
    assert all(np.isfinite(m["loss"]) for ms in runs.values() for m in ms)
    # the retain term sees the same images (augment_retain off); the forget terms see other poses
    assert runs["none"][0]["kd_retain"] == runs["affine"][0]["kd_retain"]
    assert runs["none"][0]["kd_forget"] != runs["affine"][0]["kd_forget"]


def test_tensorboard_reads_the_logged_scalars(tmp_path):
    """The stage logger's event files, read back by TensorBoard's own event reader (EventAccumulator), hold every
    scalar at its step, across a resumed stage that appends a second event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vkd_jax.unlearn.metrics_log import MetricsLogger

    log = MetricsLogger(str(tmp_path), 3, progress=False)
    log.log(1, {"loss": 2.5, "grad_norm": np.float32(0.75)})
    log.log(2, {"loss": 1.5})
    log.close()
    log = MetricsLogger(str(tmp_path), 3, start_step=2, progress=False)
    log.log(3, {"loss": 0.5})
    log.close()
    files = sorted(os.listdir(tmp_path / "tb"))
    assert len(files) == 2 and all(f.startswith("events.out.tfevents.") for f in files)
    loss = []
    for f in files:
        acc = EventAccumulator(str(tmp_path / "tb" / f))
        acc.Reload()
        loss += [(e.step, e.value) for e in acc.Scalars("loss")]
        if "grad_norm" in acc.Tags()["scalars"]:
            assert [(e.step, e.value) for e in acc.Scalars("grad_norm")] == [(1, 0.75)]
    assert sorted(loss) == [(1, 2.5), (2, 1.5), (3, 0.5)]


def test_stage_without_a_stream_its_method_reads_fails_clearly(tmp_path, ukit):
    from vkd_jax.unlearn.stages import run_stage
    cfg, params = ukit.tiny_params()
    c = _stage_cfg(ukit, tmp_path)
    c.vkd.b_g = 30.0  # VKD then also reads the generic images
    with pytest.raises(ValueError, match=r"stage 'unlearn' \(method 'vkd'\) reads streams.*missing \['generic'\]"):
        run_stage("unlearn", c, str(tmp_path), params, {"forget": ukit.Stream(1), "retain": ukit.Stream(2)},
                  model_config=cfg,
                  mesh=pt.make_mesh(None, jax.devices()[:1]), progress=False)


LORA_RUN = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import make_batch, ocfg, pcfg, tiny_params
from vkd_jax.unlearn.methods import make_method
from vkd_jax.unlearn.train import Trainer
cfg, params = tiny_params()
part = pcfg("lora_llm")
part.lora.dropout = 0.5
tr = Trainer(cfg, params, make_method("ga"), partition_cfg=part, optim_cfg=ocfg(lr=1e-2), num_steps=2)
rng = np.random.default_rng(0)
for _ in range(2):
    tr.step({{"forget": make_batch(rng)}})
h = hashlib.sha256()
for k, v in sorted(tr.params().items()):
    h.update(k.encode()); h.update(np.asarray(v).tobytes())
print(h.hexdigest())
"""


def test_lora_dropout_draws_the_same_masks_in_every_process():
    """LoRA dropout keys derive from the param names by a stable function: two processes with different string-hash
    salts train the same adapters bitwise."""
    import subprocess
    import sys

    script = LORA_RUN.format(tests=os.path.join(ROOT, "tests"))
    digests = []
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt, "JAX_PLATFORMS": "cpu"}
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        digests.append(p.stdout.split()[-1])
    assert digests[0] == digests[1]


def test_throughput_after_a_resume_counts_only_the_steps_run(monkeypatch):
    from vkd_jax.unlearn import metrics_log

    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: next(clock))
    log = metrics_log.MetricsLogger(None, 100, batch_examples=8, progress=False)
    log.resume_at(40)
    vals = log.log(50, {"loss": 1.0})
    assert vals["steps_per_s"] == 10.0 and vals["examples_per_s"] == 80.0  # 10 steps in 1 s, not 50


def test_idk_refusal_longer_than_the_bucket_grows_the_batch():
    from vkd_jax.unlearn.methods.idk import refusal_batch

    T = 8  # row 0: 5 prompt tokens + a 1-token answer; row 1: 3 + 2; row 2 padding (an invalid row)
    ids = np.zeros((3, T), np.int32)
    lm = np.zeros((3, T), np.float32)
    ids[0, :6], lm[0, 5] = [10, 11, 12, 13, 14, 40], 1
    ids[1, :5], lm[1, 3:5] = [20, 21, 22, 41, 42], 1
    att = (ids > 0).astype(np.int32)
    b = {"input_ids": ids, "loss_mask": lm, "attention_mask": att, "labels": ids.copy(),
         "positions": np.tile(np.arange(T, dtype=np.int32), (3, 1)), "valid": np.array([True, True, False]),
         "pixel_values": np.ones((3, 3, 4, 4), np.float32)}
    out = refusal_batch(b, [7, 8, 9], eos_id=2, pad_id=0)  # row 0 needs 5 + 4 = 9 > 8 tokens: next power of two
    assert out["input_ids"].shape == (3, 16) and out["loss_mask"].shape == (3, 16)
    assert list(out["input_ids"][0, :9]) == [10, 11, 12, 13, 14, 7, 8, 9, 2]
    assert list(out["input_ids"][1, :7]) == [20, 21, 22, 7, 8, 9, 2] and out["attention_mask"][1].sum() == 7
    assert list(out["labels"][0][out["loss_mask"][0] > 0]) == [7, 8, 9, 2]
    assert out["attention_mask"][2].sum() == 0 and out["loss_mask"][2].sum() == 0
    assert list(out["positions"][0, :9]) == list(range(9)) and out["pixel_values"] is b["pixel_values"]
    same = refusal_batch(b, [7], eos_id=2, pad_id=0)  # fits: the bucket stays
    assert same["input_ids"].shape == (3, T)
