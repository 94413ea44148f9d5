"""Configs build the model they describe (the 7B abstractly, checked key by key against transformers); variants
in the big_vision way; one meaning per field."""

import os

import numpy as np
import pytest

from vkd_jax import config_base
from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.hf_io import abstract_model, hf_key

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
    return config_base.load_config(os.path.join(ROOT, "configs", f"{name}.py"))


def test_variants_and_independent_stage_sections():
    c = config_base.load_config(os.path.join(ROOT, "configs", "tiny.py") + ":method=ga,forget=5,seed=2,steps=7,"
                                                                          "splits=1")
    assert (c.method, c.forget_ratio, c.seed, c.stages.unlearn.num_steps, c.splits) == ("ga", 5, 2, 7, 1)
    assert load_config("tiny").splits == 0  # the default: every person of the world forgotten once
    with pytest.raises(ValueError, match="key one of"):
        config_base.load_config(os.path.join(ROOT, "configs", "tiny.py") + ":lr=3")
    for name in ("tiny", "llava7b", "llava13b"):
        c = load_config(name)
        c.stages.unlearn.optim.lr = 0.5  # one stage's optimiser section is its own object
        assert {s: c.stages[s].optim.lr for s in c.stages if s != "unlearn"} == {
            s: load_config(name).stages[s].optim.lr for s in c.stages if s != "unlearn"}
        # the removed duplicates stay removed: one place per meaning
        assert "unlearn" not in c and "method" not in c.stages.unlearn and "partition" not in c.stages.unlearn
        assert "preset" not in c.partition and "lr" not in c.optim



def test_a_variant_field_on_the_command_line_means_the_variant():
    """`--config.data.benchmark=clear` builds what `configs/tiny.py:benchmark=clear` builds (CLEAR's world, tasks,
    buckets and stage streams, not only the field), and the other overrides still apply on top."""
    from absl import flags
    from ml_collections import config_flags

    def parse(*argv):
        fv = flags.FlagValues()
        # config_flags finds the override flags in the argv it is given at definition, as in main
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                        sys_argv=["prog", *argv])
        fv(["prog", *argv])
        return config_base.config_from_flag(fv["config"])

    tiny = os.path.join(ROOT, "configs", "tiny.py")
    got = parse("--config", tiny + ":method=ga", "--config.data.benchmark=clear", "--config.stages.vanilla.num_steps=7")
    want = config_base.load_config(tiny + ":method=ga,benchmark=clear")
    assert got.stages.vanilla.num_steps == 7 and want.stages.vanilla.num_steps != 7
    want.stages.vanilla.num_steps = 7
    assert got.to_dict() == want.to_dict()
    assert got.data.train_tasks != load_config("tiny").data.train_tasks  # CLEAR's, not MLLMU-Bench's
    plain = parse("--config", tiny, "--config.seed=3")  # no variant field: the flag's own config
    assert plain.seed == 3 and plain.data.benchmark == "mllmu"

def test_stage_seeds_and_stream_seeds_derive_from_names():
    from vkd_jax.run_streams import stream_seed

    c = load_config("tiny")
    c.seed = 3
    assert [config_base.stage_seed(c, s) for s in ("pretrain", "vanilla", "unlearn", "masks", "relearn")] == [3] * 5
    c.unlearn_seed = 8  # the unlearning seed moves only what comes after the vanilla model
    assert [config_base.stage_seed(c, s) for s in ("pretrain", "vanilla", "reference")] == [3, 3, 3]
    assert [config_base.stage_seed(c, s) for s in ("masks", "unlearn", "relearn")] == [8, 8, 8]
    names = [(st, s) for st in ("pretrain", "vanilla", "reference") for s in ("vqa", "qa", "caption")] + [
        ("masks", "forget"), ("unlearn", "forget"), ("unlearn", "retain"), ("relearn", "forget@0.1")]
    seeds = {n: stream_seed(c, *n) for n in names}
    assert len(set(seeds.values())) == len(names)  # every (stage, stream) its own order
    assert all(0 <= v < 2 ** 32 for v in seeds.values())
    c2 = load_config("tiny")
    c2.seed, c2.unlearn_seed = 3, 9
    assert {n: stream_seed(c2, *n) == seeds[n] for n in names} == {n: n[0] in ("pretrain", "vanilla", "reference")
                                                                    for n in names}


@pytest.mark.parametrize("name", ["llava7b", "llava13b", "tiny"])
def test_abstract_model_matches_transformers_param_count_and_shapes(name):
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = load_config(name)
    ours = config_from_model_dict(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype or "float32")
    _, abstract = abstract_model(ours)  # jax.eval_shape: nothing allocated
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(LlavaConfig(**cfg.model.to_dict()))
    hf_params = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    n_ours = sum(int(np.prod(s.shape)) for s in abstract.values())
    assert n_ours == sum(p.numel() for p in hf.parameters())
    if name == "llava7b":
        assert 7_000_000_000 < n_ours < 7_200_000_000  # LLaVA-1.5-7B: 7.06B
    if name == "llava13b":
        assert 13_300_000_000 < n_ours < 13_400_000_000  # LLaVA-1.5-13B: 13.35B
    from vkd_jax.models.hf_io import hf_shape, normalize_hf_key

    hf_norm = {normalize_hf_key(k): s for k, s in hf_params.items()}
    for path, sds in abstract.items():
        key, tag = hf_key(path)
        assert hf_norm[key] == hf_shape(sds.shape, tag), key
    assert len(abstract) == len(hf_norm)


def test_config_remat_reaches_the_model():
    """`config.remat` (full in llava7b.py, as the memory plan needs) is applied to both towers of the model the
    pipeline trains; tiny runs without it."""
    import types

    from vkd_jax import run_models

    tok = types.SimpleNamespace(vocab_size=100, pad_id=0, eos_id=2, bos_id=1, image_token_id=4)
    data = types.SimpleNamespace(tokenizer=tok)
    for name, want in (("llava7b", "full"), ("tiny", "none")):
        cfg = load_config(name)
        cfg.hf_dir = ""
        mc = run_models.build_model_config(cfg, data.tokenizer)
        assert (mc.vision.remat, mc.text.remat) == (want, want), name


def test_shared_folder_refuses_another_vanilla_config(tmp_path):
    from vkd_jax.workdir import check_shared

    c = load_config("tiny")
    check_shared(c, str(tmp_path))  # first use records the fields that make the vanilla model
    c.method, c.unlearn_seed, c.vkd.b_r = "ga", 3, 1.0  # what only the unlearning depends on may differ
    check_shared(c, str(tmp_path))
    c.stages.vanilla.num_steps = 5
    c.data.world.num_people = 7
    with pytest.raises(ValueError, match="another config") as e:
        check_shared(c, str(tmp_path))
    shipped = load_config("tiny")
    assert f"stages.vanilla.num_steps: {shipped.stages.vanilla.num_steps} (shared) vs 5 (config)" in str(e.value)
    assert f"data.world.num_people: {shipped.data.world.num_people} (shared) vs 7 (config)" in str(e.value)


@pytest.mark.parametrize("n_keys", [7, 20, 320])
def test_relearn_windows_cross_fit_holds_out_every_question(n_keys):
    from vkd_jax.attacks import relearn_windows

    for frac in (0.1, 0.25, 0.5, 0.75, 0.9):
        windows = relearn_windows(n_keys, frac, cross_fit_from=0.1)
        n = max(1, round(frac * n_keys))
        assert all(len(w) == n == len(set(w)) for w in windows)
        if n_keys == 320:  # no rounding: k = ceil(1 / (1 - frac)) attacks
            assert len(windows) == {0.1: 2, 0.25: 2, 0.5: 2, 0.75: 4, 0.9: 10}[frac]
        assert all(0 <= i < n_keys for w in windows for i in w)
        held_out = set(range(n_keys)) - set.intersection(*map(set, windows))
        assert held_out == set(range(n_keys)), (frac, n_keys)  # every question scored by some attack
        # window 0 is the single attack's training set, so a cross-fitted run extends an earlier one
        assert windows[0] == relearn_windows(n_keys, frac, cross_fit_from=2.0)[0] == list(range(n))
    halves = relearn_windows(n_keys, 0.5, cross_fit_from=0.5)
    if n_keys % 2 == 0:  # at one half, the two attacks' held-out questions partition the forget questions
        assert sorted(halves[0] + halves[1]) == list(range(n_keys))
    assert len(relearn_windows(n_keys, 0.25, cross_fit_from=0.5)) == 1
