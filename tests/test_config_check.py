"""The whole config is checked before any work: one error that names every bad field, exit 1, nothing written."""

import os

import pytest
from conftest import run_main

from vkd_jax.config_check import validate
from vkd_jax.models.config import ConfigError

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg=None):
    from vkd_jax.config_base import load_config

    return load_config(os.path.join(ROOT, "configs", f"{name}.py") + (f":{arg}" if arg else ""))


def test_shipped_configs_are_valid(hub_llava_dir, tmp_path):
    for arg in (None, "benchmark=clear"):
        validate(_config("tiny", arg))
        for name in ("llava7b", "llava13b"):
            c = _config(name, arg)
            c.hf_dir, c.data.manual_dir = hub_llava_dir, str(tmp_path)
            validate(c)


def test_every_bad_field_is_named_at_once():
    c = _config("tiny")
    c.method = "foo"
    c.forget_ratio = 7
    c.vkd.taps = ("vision:9", "llm:-4", "projector", "pixels")
    c.vkd.distance = "l3"
    c.vkd.b_r = -1.0
    c.stages.relearn.fractions = (0.0, 0.5, 1.5)
    c.stages.vanilla.num_steps = -3
    c.stages.vanilla.streams = ("vqa", "audio")
    c.stages.unlearn.optim.lr = 0.0
    c.stages.unlearn.optim.schedule = "cyclic"
    c.dtype = "float8"
    c.method_partition.gd = "visul"
    c.eval.cls_parse = "fuzzy"
    c.eval.test_pose = "all"
    c.mask.top_p = 1.0
    c.data.generic_images = "/no/such/folder"
    c.unlearn_seed = -2
    c.stages.relearn.optim.grad_accum = 3  # 32 rows do not split into 3 microbatches
    with pytest.raises(ConfigError) as e:
        validate(c)
    msg = str(e.value)
    for needle in ("config.method='foo'", "config.forget_ratio=7", "tap 'vision:9' is out of range",
                   "tap 'llm:-4' is out of range", "unknown feature tap 'pixels'", "config.vkd.distance='l3'",
                   "config.vkd.b_r=-1.0", "fractions: 0.0 is not in (0, 1)", "fractions: 1.5 is not in (0, 1)",
                   "config.stages.vanilla.num_steps=-3", "unknown streams ['audio']",
                   "config.stages.unlearn.optim.lr=0.0", "config.stages.unlearn.optim.schedule='cyclic'",
                   "config.dtype='float8'", "config.method_partition.gd='visul'", "config.eval.cls_parse='fuzzy'",
                   "config.eval.test_pose='all'", "config.mask.top_p=1.0", "config.data.generic_images=",
                   "config.unlearn_seed=-2", "config.stages.relearn.optim.grad_accum=3"):
        assert needle in msg, (needle, msg)
    assert msg.startswith("config has 21 bad fields"), msg.splitlines()[0]


def test_real_benchmark_paths_are_checked(tmp_path):
    c = _config("llava7b")
    c.hf_dir = str(tmp_path / "missing")
    c.data.manual_dir = ""
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert "config.hf_dir=" in str(e.value) and "config.data.manual_dir=''" in str(e.value)


def test_main_fails_before_writing_anything(tmp_path):
    work = tmp_path / "work"
    r = run_main("tiny.py", work, "--config.method=foo", "--config.vkd.taps=('vision:7',)",
                 "--config.stages.relearn.fractions=(1.0,)", timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "config has 3 bad fields" in r.stderr and "config.method='foo'" in r.stderr, r.stderr[-2000:]
    assert not work.exists()


def test_benchmark_rules_come_from_the_registry():
    """Names, forget ratios and training tasks are the registered benchmark classes' own (one registry line adds a
    benchmark)."""
    from vkd_jax.benchmarks import BENCHMARKS, benchmark_class

    c = _config("tiny")
    c.data.benchmark = "nope"
    with pytest.raises(ConfigError, match=r"config.data.benchmark='nope': use one of \('mllmu', 'clear'\)"):
        validate(c)
    c = _config("tiny", "benchmark=clear")
    validate(c)
    c.forget_ratio, c.data.train_tasks = 15, ("caption", "cloze")
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert f"clear has forget ratios {benchmark_class('clear').ratios}" in str(e.value)
    assert "['cloze'] are not clear tasks" in str(e.value)
    assert set(BENCHMARKS) == {"mllmu", "clear"}


def test_stopping_rules_are_the_benchmarks_own():
    """stop_rule=floor needs a benchmark that scores held-out forget images (MLLMU-Bench); CLEAR has none yet."""
    c = _config("tiny")
    c.stages.unlearn.stop_rule = "floor"
    validate(c)
    c.stages.unlearn.stop_every = 0
    with pytest.raises(ConfigError, match="stop_every=0: must be >= 1"):
        validate(c)
    c = _config("tiny", "benchmark=clear")
    c.stages.unlearn.stop_rule = "floor"
    with pytest.raises(ConfigError, match=r"stop_rule='floor': clear has stopping rules \('none',\)"):
        validate(c)
    c.stages.unlearn.stop_rule = "soon"
    with pytest.raises(ConfigError, match=r"stop_rule='soon': use one of \('none', 'floor'\)"):
        validate(c)
