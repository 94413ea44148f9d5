"""Matmul FLOPs of a program, counted from its jaxpr's shapes: what the plan's time estimates and the benchmarks'
FLOP rates divide by (XLA's own cost analysis undercounts loops and rematerialised blocks)."""

from __future__ import annotations

import numpy as np


def dot_flops(jaxpr) -> float:
    """Matmul FLOPs counted from the shapes of every dot_general / conv in a jaxpr (sub-jaxprs included; a scan
    body times its length, a cond its largest branch). Counts what the program computes, from shapes alone."""
    import jax
    total = 0.0
    for e in jaxpr.eqns:
        name = e.primitive.name
        if name == "dot_general":
            (lc, _), _ = e.params["dimension_numbers"]
            k = np.prod([e.invars[0].aval.shape[d] for d in lc]) if lc else 1
            total += 2.0 * np.prod(e.outvars[0].aval.shape) * k
        elif name == "conv_general_dilated":  # per output element: in-features x kernel window (rhs layout)
            rhs_spec = e.params["dimension_numbers"].rhs_spec
            w = e.invars[1].aval.shape
            total += 2.0 * np.prod(e.outvars[0].aval.shape) * np.prod([w[d] for d in rhs_spec[1:]])
        subs = []
        for v in e.params.values():
            for x in (v if isinstance(v, (list, tuple)) else (v,)):
                if isinstance(x, jax.extend.core.ClosedJaxpr):
                    subs.append(x.jaxpr)
                elif isinstance(x, jax.extend.core.Jaxpr):
                    subs.append(x)
        if name == "cond":
            total += max((dot_flops(j) for j in subs), default=0.0)
        else:
            total += sum(dot_flops(j) for j in subs) * (e.params.get("length", 1) if name == "scan" else 1)
    return total
