"""Building blocks shared by the CLIP and Llama towers (NNX modules with HF-like parameter names)."""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from flax import nnx
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from vkd_jax.errors import ConfigError

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation {name!r} is not supported; known: {sorted(ACTIVATIONS)}")  # config.json
    return ACTIVATIONS[name]


# Activation sharding: while a train step traces, `constrain` pins activations to logical axes ("batch", "mlp",
# "heads"; None = unsharded) through a function the step installs (partition.activation_shardings: logical axes ->
# NamedSharding on its mesh). Without the pins GSPMD may follow the FSDP-sharded weights instead of the
# batch-sharded inputs: it shards a matmul's contraction (embed) dim and all-reduces partial sums over the whole
# global batch (measured at 7B, v4-8, batch 32: f32 [32, 641, 11008] buffers per chip instead of [8, 641, 11008]).
# Outside such a context (inference, tests on one device) `constrain` is the identity.
_ACTIVATION_SHARDING = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(fn):
    """fn(logical axes, shape) -> a jax Sharding; active for the model code traced inside the block."""
    token = _ACTIVATION_SHARDING.set(fn)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain(x, *logical):
    fn = _ACTIVATION_SHARDING.get()
    return x if fn is None else jax.lax.with_sharding_constraint(x, fn(logical, x.shape))


# Activation checkpointing of one decoder/encoder block: "full" keeps only the block inputs for the backward pass
# (everything inside is recomputed), "dots" also keeps the outputs of the weight matmuls (no recomputed matmuls,
# still no attention scores or elementwise intermediates held).
REMAT_POLICIES = {"none": None, "full": None, "dots": "dots_with_no_batch_dims_saveable"}


def remat_call(module: nnx.Module, policy: str, *args):
    """module(*args), recomputed in the backward pass unless policy == "none". The module's state goes in as an
    explicit argument of a pure function, so jax.checkpoint sees (and differentiates) the params.

    The recomputation is pinned behind the block's incoming cotangent (an optimization barrier over the residuals
    and the cotangent), and the forward behind the block's input (barrier over the params and inputs, so FSDP
    all-gathers of the block's weights happen when the block runs). Without them nothing orders a block's
    recomputation after the backward of the blocks above it, and a scheduler may hoist every recompute to the start
    of the backward pass, where remat saves nothing. TPU and GPU compilers keep the barriers until they schedule;
    XLA's CPU compiler drops them first, which is why the memory plan's CPU `temp` does not fall with remat
    (bench/remat_cpu_check.py)."""
    if policy == "none":
        return module(*args)
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r}: use one of {sorted(REMAT_POLICIES)}")
    graphdef, state = nnx.split(module)
    name = REMAT_POLICIES[policy]

    def pure(st, *a):
        return nnx.merge(graphdef, st)(*a)
    fn = jax.checkpoint(pure, policy=getattr(jax.checkpoint_policies, name) if name else None)
    # which inputs the caller differentiates (symbolic zeros): the backward computes cotangents for those only, so a
    # frozen block (VKD's LLM) costs no weight-gradient matmuls; set by fwd, read by the bwd of the same call
    seen: dict = {}

    @jax.custom_vjp
    def call(st, *a):
        return fn(*jax.lax.optimization_barrier((st, *a)))

    def fwd(st, *a):
        primals, tree = jax.tree.flatten((st, a), is_leaf=lambda x: isinstance(x, CustomVJPPrimal))
        values = list(jax.lax.optimization_barrier(tuple(p.value for p in primals)))
        seen.update(tree=tree, perturbed=[p.perturbed for p in primals])

        def differentiated(*diff):
            it = iter(diff)
            s, args = jax.tree.unflatten(tree, [next(it) if on else v for v, on in zip(values, seen["perturbed"])])
            return fn(s, *args)
        return jax.vjp(differentiated, *[v for v, on in zip(values, seen["perturbed"]) if on])

    def bwd(vjp_fn, g):
        g = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype) if isinstance(t, SymbolicZero) else t, g,
                         is_leaf=lambda t: isinstance(t, SymbolicZero))
        vjp_fn, g = jax.lax.optimization_barrier((vjp_fn, g))
        cts = iter(vjp_fn(g))
        st_ct, args_ct = jax.tree.unflatten(seen["tree"], [next(cts) if on else None for on in seen["perturbed"]])
        return (st_ct, *args_ct)
    call.defvjp(fwd, bwd, symbolic_zeros=True)
    return call(state, *args)


def linear(din: int, dout: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm semantics (biased variance); statistics in fp32, result in the compute dtype."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm exactly as HF: normalise in fp32, cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * y.astype(self.dtype)


def dot_product_attention(q, k, v, mask, scale: float):
    """q [B,T,H,D], k/v [B,S,KV,D] (H a multiple of KV: grouped-query attention without repeating k/v),
    mask bool broadcastable to [B,1,T,S] or None. Softmax in fp32 as HF's eager attention does."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, v.shape[-1])
