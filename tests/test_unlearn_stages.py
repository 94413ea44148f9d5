"""Unlearning stages over the REAL input pipeline (embedded benchmark -> TFDS -> grain), and the engine paths the
step tests leave out: answer-slot logits, frozen-weight gradients, the shared teacher vision pass, VKD `target`,
an `llm:j` tap without logits, bf16 frozen params, the lagged NaN/inf abort."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vkd_jax.benchmarks.mllmu import generator as synthetic
from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
from vkd_jax.benchmarks.mllmu.prompts import profile_examples
from vkd_jax.config_base import load_config
from vkd_jax.data import pipeline
from vkd_jax.data.pipeline import InputPipeline, PipelineConfig
from vkd_jax.data.tokenizer import train_tokenizer
from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.hf_io import abstract_model, flat_params
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import common, make_method, method_config
from vkd_jax.unlearn.train import Trainer, prepare_batch

pytestmark = pytest.mark.integration

_pipeline = functools.partial(InputPipeline, examples=profile_examples)  # MLLMU-Bench profiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = synthetic.WorldConfig(num_people=10, num_celebrities=2, num_facts=2, values_per_fact=4, ft_poses=2,
                              test_poses=1, image_size=16)


def _one():
    return pt.make_mesh(None, jax.devices()[:1])


def _tiny_cfg():
    return load_config(os.path.join(ROOT, "configs", "tiny.py"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A generated benchmark, its tokenizer, TFDS sources and a small model sized to the tokenizer."""
    root = tmp_path_factory.mktemp("stagebench")
    synthetic.generate(root / "manual", seed=0, cfg=WORLD)
    tok = train_tokenizer(synthetic.tokenizer_texts(root / "manual"), root / "tok", vocab_size=512)
    srcs = {c: mllmu_bench.load(c, root / "data", root / "manual") for c in ("ft_Data", "forget_10", "retain_90")}
    c = _tiny_cfg()
    c.model.vision_config.update(hidden_size=32, intermediate_size=64, image_size=16, num_attention_heads=2)
    c.model.text_config.update(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                               pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    c.model.update(image_token_index=tok.image_token_id, image_seq_length=4)
    c.mesh.data = 1
    c.checkpoint.update(every_steps=1000, log_every=5)
    c.mask.num_batches = 2
    for st in ("pretrain", "vanilla", "reference"):  # the micro world has no generic images to caption
        c.stages[st].streams = ("vqa", "qa")
    mc = config_from_model_dict(c.model.to_dict(), dtype="float32", param_dtype="float32")
    from flax import nnx

    from vkd_jax.models.llava import Llava
    params = flat_params(Llava(mc, rngs=nnx.Rngs(0)))
    return dict(tok=tok, srcs=srcs, cfg=c, mc=mc, params=params)


def _stream(bench, source, types, ids=None, seed=0, batch=4):
    mc = bench["mc"]
    pc = PipelineConfig(tasks=("ft",), types=types, global_batch_size=batch, max_len=64,
                        seed=seed, num_epochs=None, image_seq_length=mc.image_seq_length,
                        image=pipeline.image_config(mc.vision.image_size), num_threads=1, prefetch=2, ids=ids)
    return _pipeline(bench["srcs"][source], bench["tok"], pc)


def _streams(bench, *names):
    forget = pipeline.forget_ids(bench["srcs"]["forget_10"])
    retain = pipeline.forget_ids(bench["srcs"]["retain_90"])
    make = {"vqa": lambda: _stream(bench, "ft_Data", ("Image_Textual",), seed=1),
            "qa": lambda: _stream(bench, "ft_Data", ("Pure_Text",), seed=2),
            "forget": lambda: _stream(bench, "ft_Data", ("Image_Textual",), ids=forget, seed=3),
            "retain": lambda: _stream(bench, "ft_Data", ("Image_Textual",), ids=retain, seed=4)}
    return {n: make[n]() for n in names}


def _mean_nll(ukit, bench, params, stream, n=2):
    """Answer NLL of the model with `params` over the first n batches of a fresh stream (one jit per module)."""
    if "nll_fn" not in bench:
        graphdef, abstract = abstract_model(bench["mc"])
        part = pt.make_partition(abstract, ukit.pcfg("full", num_vit_layers=2))
        ctx = common.Ctx(graphdef, part)
        bench["nll_fn"] = jax.jit(lambda p, b: common.nll(ctx.apply(p, b).logits, b))
    fn = bench["nll_fn"]
    full = dict(params)
    it = iter(stream)
    return float(np.mean([fn(full, prepare_batch(next(it))) for _ in range(n)]))


def test_vanilla_and_reference_stages_fit_the_real_pipeline(bench, tmp_path, ukit):
    from vkd_jax.unlearn.stages import run_stage
    c = bench["cfg"]
    before = _mean_nll(ukit, bench, bench["params"], _streams(bench, "vqa")["vqa"])
    res = run_stage("vanilla", c, str(tmp_path), bench["params"], _streams(bench, "vqa", "qa"),
                    model_config=bench["mc"], mesh=_one(), num_steps=20, progress=False)
    after = _mean_nll(ukit, bench, res.params, _streams(bench, "vqa")["vqa"])
    assert after < before - 1.0, (before, after)  # fine-tuning on the profiles lowers the training loss
    log = [json.loads(x) for x in open(tmp_path / "vanilla" / "metrics.jsonl")]
    assert {"nll_vqa", "nll_qa"} <= set(log[-1])
    again = run_stage("vanilla", c, str(tmp_path), bench["params"], {}, model_config=bench["mc"], mesh=_one(),
                      progress=False)
    for k, v in res.params.items():  # finished: loaded from <stage>/params, not re-run (no streams needed)
        np.testing.assert_array_equal(np.asarray(again.params[k]), np.asarray(v))
    ref = run_stage("reference", c, str(tmp_path), bench["params"], _streams(bench, "vqa", "qa"),
                    model_config=bench["mc"], mesh=_one(), num_steps=2, progress=False)
    assert os.path.isdir(tmp_path / "reference" / "params")
    assert any(not np.array_equal(np.asarray(ref.params[k]), np.asarray(bench["params"][k])) for k in ref.params)


def test_masks_stage_writes_fractional_masks(bench, tmp_path, ukit):
    from vkd_jax.unlearn.stages import run_stage
    c = bench["cfg"]
    res = run_stage("masks", c, str(tmp_path), bench["params"], _streams(bench, "forget", "retain"),
                    model_config=bench["mc"], mesh=_one(), progress=False)
    frac = json.load(open(tmp_path / "masks" / "final" / "kept_fraction.json"))
    assert 0 < frac["all"] < 1 and "projector" in frac
    assert set(res.masks) == {k for k, r in pt.make_partition(abstract_model(bench["mc"])[1], ukit.pcfg(
        "visual", num_vit_layers=2)).rules.items() if r == "train"}
    again = run_stage("masks", c, str(tmp_path), bench["params"], {}, model_config=bench["mc"], mesh=_one(),
                      progress=False)
    for k in res.masks:
        np.testing.assert_array_equal(np.asarray(again.masks[k]), np.asarray(res.masks[k]))


def test_unlearn_then_relearn_recovers_forget_nll(bench, tmp_path, ukit):
    from vkd_jax.unlearn.stages import run_stage
    c = ml_collections.ConfigDict(bench["cfg"].to_dict())
    c.method, c.method_partition.ga = "ga", "full"
    c.stages.unlearn.update(optim=dict(lr=5e-3, schedule="constant"))
    fresh = lambda: _streams(bench, "forget")["forget"]  # noqa: E731
    nll0 = _mean_nll(ukit, bench, bench["params"], fresh())
    un = run_stage("unlearn", c, str(tmp_path), bench["params"], _streams(bench, "forget", "retain"),
                   model_config=bench["mc"], mesh=_one(), num_steps=4, progress=False)
    nll_un = _mean_nll(ukit, bench, un.params, fresh())
    assert nll_un > nll0 + 0.5, (nll0, nll_un)
    re = run_stage("relearn", c, str(tmp_path), un.params, _streams(bench, "forget"), model_config=bench["mc"],
                   mesh=_one(), num_steps=8, progress=False)
    nll_re = _mean_nll(ukit, bench, re.params, fresh())
    assert nll_re < nll_un - 0.5, (nll_un, nll_re)  # the attack brings the forgotten answers back


# ---- engine paths on the synthetic fixture batches -------------------------------------------------------------

def _ctx(ukit, cfg, preset):
    graphdef, abstract = abstract_model(cfg)
    part = pt.make_partition(abstract, ukit.pcfg(preset))
    return common.Ctx(graphdef, part), part


def test_answer_slot_logits_equal_full_logits(ukit):
    cfg, params = ukit.tiny_params()
    ctx, part = _ctx(ukit, cfg, "full")
    full = dict(params)
    raw = ukit.make_batch(np.random.default_rng(3), b=3, t=14, answer=4)
    raw["valid"][2] = False
    slots = prepare_batch(raw)
    assert slots["logit_pos"].shape == (3, 8)  # 5 answer slots per row -> the 8 bucket
    plain = {k: v for k, v in slots.items() if not k.startswith("logit_")}
    lf, ls = ctx.apply(full, plain).logits, ctx.apply(full, slots).logits
    assert lf.shape[1] == 14 and ls.shape[1] == 8
    np.testing.assert_allclose(common.nll(ls, slots), common.nll(lf, plain), rtol=1e-6)
    np.testing.assert_allclose(common.nll(ls, slots, bound=0.5), common.nll(lf, plain, bound=0.5), rtol=1e-6)
    np.testing.assert_allclose(common.seq_logp(ls, slots), common.seq_logp(lf, plain), rtol=1e-5)
    np.testing.assert_allclose(common.kl_teacher_student(ls, ls * 0.5, slots),
                               common.kl_teacher_student(lf, lf * 0.5, plain), rtol=1e-5)


def _dots(jaxpr, out):
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            out.append(tuple(e.outvars[0].aval.shape))
        for v in e.params.values():
            for x in (v if isinstance(v, (list, tuple)) else (v,)):
                if isinstance(x, jax.extend.core.ClosedJaxpr):
                    _dots(x.jaxpr, out)
                elif isinstance(x, jax.extend.core.Jaxpr):
                    _dots(x, out)
    return out


def test_frozen_llm_gets_no_weight_gradient_and_shares_the_teacher_vision_pass(ukit):
    cfg, params = ukit.tiny_params()
    b = {s: ukit.make_batch(np.random.default_rng(i)) for i, s in enumerate(("forget", "retain"))}
    vkd = method_config("vkd", taps=("projector",), a_f=1.0, b_r=10.0)
    llm_w = {(32, 64), (64, 32)}  # the Llama MLP kernels (no visual param has these shapes)
    for preset, method, expect in (("visual", "vkd", False), ("full", "gd", True)):
        tr = Trainer(cfg, params, make_method(method, vkd if method == "vkd" else method_config(method)),
                     partition_cfg=ukit.pcfg(preset), optim_cfg=ukit.ocfg(), num_steps=1)
        bb = tr.prepare(b)
        shapes = _dots(jax.make_jaxpr(tr.built.step)(tr.state, bb, tr.frozen, tr.aux).jaxpr, [])
        assert any(s in llm_w for s in shapes) == expect, preset
    # projector preset: the student's frozen ViT pass and the teacher's are one computation after XLA's CSE
    tr = Trainer(cfg, params, make_method("vkd", vkd), partition_cfg=ukit.pcfg("projector"), optim_cfg=ukit.ocfg(),
                 num_steps=1)
    bb = tr.prepare(b)
    hlo = tr.built.jit(bb).lower(tr.state, bb, tr.frozen, tr.aux).compile().as_text()
    assert hlo.count(" convolution(") == 2  # patch embeddings: forget + retain images, no third (teacher) pass


def test_vkd_target_mode_moves_forget_features_toward_the_identity_free_target(ukit):
    cfg, params = ukit.tiny_params()
    vkd = method_config("vkd", taps=("projector",), a_f=0.0, b_r=0.0, b_f=1.0, forget_kd="target",
                        target_image="mean")
    tr = Trainer(cfg, params, make_method("vkd", vkd), partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(lr=3e-3),
                 num_steps=20)
    from vkd_jax.unlearn.methods.vkd import identity_free
    rng = np.random.default_rng(5)
    b = {"forget": ukit.make_batch(rng), "retain": ukit.make_batch(rng)}
    ctx, _ = _ctx(ukit, cfg, "visual")
    teacher = dict(params)
    target = ctx.apply(teacher, dict(b["forget"], pixel_values=identity_free(b["forget"]["pixel_values"], "mean")),
                       ("projector",), logits=False).features["projector"]

    def dist(p):
        f = ctx.apply(p, b["forget"], ("projector",), logits=False).features["projector"]
        return float(common.feature_distance(f, target))
    d0 = dist(teacher)
    for _ in range(20):
        m = tr.step(b)
    d1 = dist(tr.params())
    assert d1 < 0.5 * d0, (d0, d1)
    np.testing.assert_allclose(float(m["kd_forget"]), d1, rtol=0.2)


def test_vkd_generic_images_keep_their_features_while_forget_ga_moves_the_tower(ukit):
    """b_g distils the projector features of a third stream (images outside every split): under the same forget GA,
    those features drift far less than without it; the stream is read only when b_g > 0."""
    cfg, params = ukit.tiny_params()
    rng = np.random.default_rng(7)
    b = {"forget": ukit.make_batch(rng), "retain": ukit.make_batch(rng), "generic": ukit.make_batch(rng)}
    ctx, _ = _ctx(ukit, cfg, "visual")
    teacher = dict(params)
    feats = lambda p: ctx.apply(p, b["generic"], ("projector",), logits=False).features["projector"]  # noqa: E731
    f0 = feats(teacher)
    drift, metrics = {}, {}
    for b_g in (0.0, 30.0):
        vkd = method_config("vkd", taps=("projector",), a_f=1.0, ga_bound=5.0, b_r=0.0, b_g=b_g)
        method = make_method("vkd", vkd)
        assert method.streams == (("forget", "retain", "generic") if b_g else ("forget", "retain"))
        tr = Trainer(cfg, params, method, partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(lr=3e-3), num_steps=10)
        for _ in range(10):
            metrics[b_g] = tr.step({s: b[s] for s in method.streams})
        drift[b_g] = float(common.feature_distance(feats(tr.params()), f0))
    assert drift[0.0] > 0 and drift[30.0] < 0.3 * drift[0.0], drift
    assert "kd_generic" in metrics[30.0] and "kd_generic" not in metrics[0.0]


def test_llm_tap_without_logits_runs_only_the_needed_layers(ukit):
    cfg, params = ukit.tiny_params()
    ctx, _ = _ctx(ukit, cfg, "visual")
    full = dict(params)
    b = ukit.make_batch(np.random.default_rng(2))
    with_logits = ctx.apply(full, b, ("llm:1",), logits=True)
    tap_only = ctx.apply(full, b, ("llm:1",), logits=False)
    assert tap_only.logits is None
    np.testing.assert_allclose(tap_only.features["llm:1"], with_logits.features["llm:1"], rtol=1e-5, atol=1e-6)
    n_full = len(_dots(jax.make_jaxpr(lambda p: ctx.apply(p, b, ("llm:1",), logits=True).logits)(full).jaxpr, []))
    n_tap = len(_dots(jax.make_jaxpr(lambda p: ctx.apply(p, b, ("llm:1",), logits=False).features)(full).jaxpr,
                      []))
    assert n_tap < n_full  # decoder layer 2 and the head are not run
    vkd = method_config("vkd", taps=("llm:1",), a_f=0.0, b_r=10.0, b_f=1.0, forget_kd="push")
    tr = Trainer(cfg, params, make_method("vkd", vkd), partition_cfg=ukit.pcfg("visual"), optim_cfg=ukit.ocfg(),
                 num_steps=3)
    ms = [jax.device_get(tr.step({"forget": ukit.make_batch(np.random.default_rng(i)),
                                  "retain": ukit.make_batch(np.random.default_rng(i + 10))})) for i in range(3)]
    assert ms[0]["kd_retain"] < 1e-12 and ms[-1]["kd_retain"] > 1e-6 and ms[-1]["kd_forget"] < 0


def test_bf16_frozen_llm(ukit):
    cfg, params = ukit.tiny_params()
    vkd = method_config("vkd", taps=("projector",), a_f=1.0, b_r=10.0)
    b = {s: ukit.make_batch(np.random.default_rng(i)) for i, s in enumerate(("forget", "retain"))}
    losses = {}
    for fd in ("", "bfloat16"):
        part_cfg = ukit.pcfg("visual")
        part_cfg.frozen_dtype = fd
        tr = Trainer(cfg, params, make_method("vkd", vkd), partition_cfg=part_cfg, optim_cfg=ukit.ocfg(), num_steps=2)
        if fd:
            assert all(v.dtype == jnp.bfloat16 for v in tr.frozen.values())
            assert all(v.dtype == jnp.float32 for v in tr.state.trainable.values())
        losses[fd] = [float(tr.step(b)["loss"]) for _ in range(2)]
    np.testing.assert_allclose(losses["bfloat16"], losses[""], rtol=2e-2)
    assert losses["bfloat16"] != losses[""]  # the frozen LLM really is held in bf16


def test_nan_guard_aborts_one_step_after_the_count_without_a_sync_per_step(ukit):
    cfg, params = ukit.tiny_params()
    tr = Trainer(cfg, params, make_method("ga"), partition_cfg=ukit.pcfg("projector"),
                 optim_cfg=ukit.ocfg(max_skipped_steps=2),
                 num_steps=50)

    class NanStream(ukit.Stream):
        def __next__(self):
            b = super().__next__()
            b["pixel_values"][:] = np.nan
            return b
    streams = {"forget": NanStream(1)}
    with pytest.raises(FloatingPointError, match="max_skipped_steps=2"):
        tr.fit(streams, log_every=1000)  # no log or checkpoint step: only the lagged per-step check can fire
    # the 3rd skipped step exceeds the limit; the host sees it when dispatching the 4th
    assert streams["forget"].i == 4 and int(tr.state.skipped) == 4
