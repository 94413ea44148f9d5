"""Method registry: name -> MethodSpec. Each method's file declares its spec (`SPEC`: its config fields with their
defaults, the allowed values of its choice fields, its default partition) beside its loss; the config base builds
config.<method> and config.method_partition from here, the config check validates against it, and make_method
checks a section the same way. Adding a method = one file + one line here."""

import ml_collections

from vkd_jax.unlearn.methods import ft, ga, gd, idk, kl, mmunlearner, npo, vkd
from vkd_jax.unlearn.methods.common import Ctx, Method, MethodSpec

METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    vkd.SPEC,
    ga.SPEC,
    gd.SPEC,
    kl.SPEC,
    npo.SPEC,
    idk.SPEC,
    mmunlearner.SPEC,
    ft.SPEC,
)}
# the methods config.method may name, in the registry's order
UNLEARN_METHODS = tuple(name for name, spec in METHODS.items() if spec.unlearning)


def spec_of(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """A method's section as the registry declares it, with `overrides` set: what code outside a pipeline config
    (tests, benches) hands to make_method."""
    spec = spec_of(name)
    unknown = sorted(set(overrides) - set(spec.fields))
    if unknown:
        raise ValueError(f"method {name!r} has no fields {unknown} (its fields: {', '.join(spec.fields)})")
    return ml_collections.ConfigDict({**spec.fields, **overrides})


def config_errors(name: str, section, where: str | None = None) -> list[str]:
    """Every way `section` departs from method `name`'s declaration (unknown or missing fields, a choice outside its
    values, a number outside its limits), worded as config_check words them; `where` names the section
    (default config.<name>)."""
    spec, where = spec_of(name), where or f"config.{name}"
    if section is None:
        return [f"{where}: missing (method {name!r} reads the fields {', '.join(spec.fields)})"]
    errs = [f"{where}.{k}: unknown field of method {name!r} (known: {', '.join(spec.fields)})"
            for k in section.keys() if k not in spec.fields]
    errs += [f"{where}.{k}: missing (method {name!r} reads it; declared default {v!r})"
             for k, v in spec.fields.items() if k not in section]
    for k, allowed in spec.choices.items():
        if k in section and section[k] not in allowed:
            errs.append(f"{where}.{k}={section[k]!r}: use one of {allowed}")
    for k, (op, bound) in spec.limits.items():
        if k in section and not (float(section[k]) >= bound if op == ">=" else float(section[k]) > bound):
            errs.append(f"{where}.{k}={section[k]!r}: must be {op} {bound:g}")
    return errs


def make_method(name: str, cfg=None, tokenizer=None) -> Method:
    """The method built from its section `cfg` (every declared field; None: the declared defaults)."""
    spec = spec_of(name)
    cfg = method_config(name) if cfg is None else cfg
    errs = config_errors(name, cfg, where=name)
    if errs:
        raise ValueError("; ".join(errs))
    return spec.make(cfg, tokenizer)


__all__ = ["METHODS", "UNLEARN_METHODS", "Ctx", "Method", "MethodSpec", "config_errors", "make_method",
           "method_config", "spec_of"]
