"""Method registry: name -> make(cfg, tokenizer=None) -> Method. Adding a method = one file + one line here."""

from vkd_jax.unlearn.methods import ft, ga, gd, idk, kl, mmunlearner, npo, vkd
from vkd_jax.unlearn.methods.common import Ctx, Method

METHODS = {
    "ft": ft.make,
    "ga": ga.make,
    "gd": gd.make,
    "kl": kl.make,
    "npo": npo.make,
    "idk": idk.make,
    "mmunlearner": mmunlearner.make,
    "vkd": vkd.make,
}


def make_method(name: str, cfg=None, tokenizer=None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](cfg, tokenizer)


__all__ = ["METHODS", "Ctx", "Method", "make_method"]
