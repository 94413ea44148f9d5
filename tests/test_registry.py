"""Each fact about the configuration is declared once, and these tests fail when a second declaration creeps back:
a method's fields, defaults, allowed values and default partition beside its loss (the registry); the optimiser,
checkpoint and LoRA defaults in the config base, read by the engine without defaults of its own; the stage names in
config_base."""

import ast
import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import pytest

from vkd_jax import config_base, config_check
from vkd_jax.models.config import ConfigError
from vkd_jax.unlearn import partition as pt
from vkd_jax.unlearn.methods import METHODS, UNLEARN_METHODS, common, make_method, method_config

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tiny():
    return config_base.load_config(os.path.join(ROOT, "configs", "tiny.py"))


class Reads(Mapping):
    """A config section that records which fields the code reads."""

    def __init__(self, d):
        self.d, self.read = dict(d), set()

    def __getitem__(self, k):
        self.read.add(k)
        return self.d[k]

    def __iter__(self):
        return iter(self.d)

    def __len__(self):
        return len(self.d)


def test_the_base_holds_exactly_each_methods_declared_fields():
    c = config_base.base()
    assert set(c.method_partition) == set(UNLEARN_METHODS)
    for name, spec in METHODS.items():
        assert method_config(name).to_dict() == spec.fields, name
        if spec.unlearning:
            assert c[name].to_dict() == spec.fields, name
            assert c.method_partition[name] == spec.partition, name
        else:  # ft: no section of its own; the fine-tuning stages' sections carry its fields
            assert name not in c
            ft_stages = [s for s in config_base.TRAIN_STAGES if c.stages[s].get("method") == name]
            assert ft_stages and all(set(spec.fields) <= set(c.stages[s]) for s in ft_stages)


def test_make_method_refuses_a_section_that_departs_from_the_declaration():
    section = method_config("gd").to_dict()
    del section["retain_weight"]
    with pytest.raises(ValueError, match=r"gd.retain_weight: missing"):
        make_method("gd", section)
    with pytest.raises(ValueError, match=r"gd.bound: unknown field"):
        make_method("gd", dict(method_config("gd"), bound=1.0))
    with pytest.raises(ValueError, match=r"has no fields \['bound'\]"):
        method_config("gd", bound=1.0)


def test_every_choice_and_limit_is_validated_from_the_declaration():
    for name in UNLEARN_METHODS:
        spec = METHODS[name]
        bad = {f: "nope" for f in spec.choices} | {f: bound - 1.0 for f, (_, bound) in spec.limits.items()}
        for field, value in bad.items():
            if field in spec.choices:
                want = f"config.{name}.{field}={value!r}: use one of {spec.choices[field]}"
            else:
                op, bound = spec.limits[field]
                want = f"config.{name}.{field}={value!r}: must be {op} {bound:g}"
            c = _tiny()
            c[name][field] = value
            with pytest.raises(ConfigError, match=re.escape(want)):
                config_check.validate(c)
            with pytest.raises(ValueError, match=re.escape(want.removeprefix("config."))):
                make_method(name, method_config(name, **{field: value}))
    c = _tiny()
    c.gd.bound = 1.0
    c.method_partition.foo = "full"
    with pytest.raises(ConfigError) as e:
        config_check.validate(c)
    assert "config.gd.bound: unknown field" in str(e.value)
    assert "config.method_partition.foo: unknown method" in str(e.value)


def test_config_check_restates_no_method_and_no_stage():
    assert not [f for f in config_check.CHOICES if f.partition(".")[0] in METHODS]
    assert config_check.UNLEARN_METHODS is UNLEARN_METHODS
    assert config_check.TRAIN_STAGES is config_base.TRAIN_STAGES
    assert config_check.STAGE_STREAMS is config_base.STAGE_STREAMS
    c = config_base.base()
    assert set(config_check.OPTIM_FIELDS) == set(c.optim) | set(c.stages.unlearn.optim)


def test_stage_names_are_declared_once(ukit):
    from vkd_jax.unlearn import stages

    c = config_base.base()
    assert set(c.stages) == set(config_base.TRAIN_STAGES)
    assert stages.STAGES is config_base.STAGES
    assert set(config_base.STAGE_STREAMS) == {s for s in config_base.TRAIN_STAGES if "streams" in c.stages[s]}
    # a fine-tuning stage's streams reach ft from the stage's own section
    assert stages.stage_training(c, "relearn", ukit.tiny_config())[0].streams == tuple(c.stages.relearn.streams)


def _names_a_config(node) -> bool:
    """`cfg`, `ocfg`, `ckpt_cfg`, `cfg.npo`, ...: a config section by the engine's naming (not a batch or a dict)."""
    return isinstance(node, (ast.Name, ast.Attribute)) and "cfg" in ast.unparse(node)


def test_no_fallback_defaults_under_unlearn():
    """No module of the engine reads a config field with a default of its own (`get(cfg, k, d)`, `cfg.get(k, d)`,
    `getattr(cfg, k, d)`): every default has one place."""
    assert not hasattr(common, "get")
    bad = []
    for path in sorted((ROOT / "vkd_jax" / "unlearn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f, n_args = node.func, len(node.args) + len(node.keywords)
            if isinstance(f, ast.Name) and f.id == "get" and n_args == 3:
                bad.append(f"{path.name}:{node.lineno}")
            elif isinstance(f, ast.Name) and f.id == "getattr" and n_args == 3 and _names_a_config(node.args[0]):
                bad.append(f"{path.name}:{node.lineno}")
            elif isinstance(f, ast.Attribute) and f.attr == "get" and n_args >= 2 and _names_a_config(f.value):
                bad.append(f"{path.name}:{node.lineno}")
    assert not bad, bad


def test_engine_reads_every_optimiser_partition_and_checkpoint_field_of_the_base(ukit, tmp_path):
    """The engine reads each field the config base declares for it and has no default of its own, so what a run
    uses is what the base (or the config file) says."""
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.train import Trainer

    c = config_base.base()
    optim = Reads(stages.optim_cfg(c, c.stages.unlearn).to_dict())
    lora = Reads(c.partition.lora.to_dict())
    part = Reads({**c.partition.to_dict(), "lora": lora, "preset": "lora_llm", "num_vit_layers": 2})
    ckpt = Reads(c.checkpoint.to_dict())
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(pt.LoraConfig))
    cfg, params = ukit.tiny_params()
    tr = Trainer(cfg, params, make_method("ga"), partition_cfg=part, optim_cfg=optim, num_steps=1)
    assert tr.part.lora == pt.LoraConfig(**c.partition.lora)
    tr.fit({"forget": ukit.Stream(1)}, log_every=1, workdir=str(tmp_path), ckpt_cfg=ckpt)
    assert optim.read == set(optim)
    assert part.read == set(part) and lora.read == set(lora)
    assert ckpt.read | {"log_every"} == set(ckpt)  # log_every: the stage hands it to fit (stages._train_stage)
