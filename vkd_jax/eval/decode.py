"""Batched greedy decoding with the KV cache: one jitted function per (batch, prompt length, images, max_new_tokens).

The prompt is left-padded, so every row's last prompt token sits in the last slot and the first new token is the
argmax there. The cache holds `T + max_new_tokens` slots; the attention mask covers them all, with the generated
slots set to 1 up front (causality already hides slots not yet written, and position ids count real tokens only,
so this is what HF `generate` computes). A `jax.lax.while_loop` then feeds one token at a time and exits as soon as
every row has produced EOS; after a row's EOS it writes `pad_id`. Shapes are static: the output is always
[B, max_new_tokens].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "pad_id"))
def _greedy(graphdef, state, input_ids, attention_mask, pixel_values, *, max_new_tokens: int, eos_id: int,
            pad_id: int):
    model = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    mask = jnp.concatenate([attention_mask.astype(bool), jnp.ones((b, max_new_tokens), bool)], axis=1)
    cache = model.init_cache(b, t + max_new_tokens)
    out = model.forward(input_ids, pixel_values, mask, cache=cache, last_logits_only=True)
    tok = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    done = tok == eos_id
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tok, cache, done, tokens = carry
        res = model.forward(tok[:, None], None, mask, cache=cache)
        nxt = jnp.argmax(res.logits[:, -1], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, i))
        return i + 1, nxt, res.cache, done | (nxt == eos_id), tokens

    _, _, _, done, tokens = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, out.cache, done, tokens))
    return tokens


def greedy_decode(model, input_ids, attention_mask, pixel_values=None, *, max_new_tokens: int, eos_id: int,
                  pad_id: int, split=None) -> np.ndarray:
    """Greedy continuation of left-padded prompts -> [B, max_new_tokens] int32 token ids: each row's new tokens up to
    and including its first EOS, `pad_id` after it (or `max_new_tokens` tokens when no EOS comes).

    input_ids / attention_mask [B, T] LEFT-padded (the last column must be a real token in every row);
    pixel_values [N, C, H, W] for the image tokens in input_ids (row-major), or None for text-only batches.
    `split`: a precomputed `nnx.split(model)` to skip re-splitting on every call (the evaluator passes it)."""
    mask = np.asarray(attention_mask)
    if not mask[:, -1].all():
        raise ValueError("greedy_decode needs LEFT-padded prompts: the last slot of every row must be a real token "
                         f"(rows without one: {np.nonzero(~mask[:, -1].astype(bool))[0].tolist()})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    graphdef, state = split if split is not None else nnx.split(model)
    toks = _greedy(graphdef, state, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                   None if pixel_values is None else jnp.asarray(pixel_values),
                   max_new_tokens=int(max_new_tokens), eos_id=int(eos_id), pad_id=int(pad_id))
    return np.asarray(toks)


def strip_after_eos(tokens, eos_id: int) -> list[list[int]]:
    """[B, N] decoded ids -> per row, the ids before the first EOS (EOS and padding dropped)."""
    out = []
    for row in np.asarray(tokens).tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "k"))
def _tail_logprobs(graphdef, state, input_ids, attention_mask, pixel_values, target_mask, *, k: int):
    model = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    at = jnp.broadcast_to(jnp.arange(t - k - 1, t - 1, dtype=jnp.int32), (b, k))  # slots predicting the last k
    logits = model.forward(input_ids, pixel_values, attention_mask, logits_at=at).logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, input_ids[:, t - k:, None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(target_mask[:, t - k:], tok, 0.0), axis=-1)


def continuation_logprobs(model, input_ids, attention_mask, target_mask, pixel_values=None, *, split=None,
                          buckets=(8, 16, 32, 64, 128)) -> np.ndarray:
    """Sum of log p(token | everything before it) over the `target_mask` slots of LEFT-padded rows -> [B] float32.
    The targets must sit in each row's last slots (a prompt followed by its continuation); one jitted function per
    (batch, length, tail bucket): the logits are computed at the tail slots only."""
    mask, tgt = np.asarray(attention_mask), np.asarray(target_mask, bool)
    if not mask[:, -1].all():
        raise ValueError("continuation_logprobs needs LEFT-padded rows: the last slot of every row must be real")
    first = np.where(tgt.any(1), tgt.argmax(1), tgt.shape[1])
    need = int(tgt.shape[1] - first.min())
    k = next((b for b in sorted(buckets) if b >= need), need)
    if k >= tgt.shape[1]:
        raise ValueError(f"continuation of {need} tokens leaves no prompt slot in rows of {tgt.shape[1]}")
    graphdef, state = split if split is not None else nnx.split(model)
    out = _tail_logprobs(graphdef, state, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                         None if pixel_values is None else jnp.asarray(pixel_values), jnp.asarray(tgt), k=int(k))
    return np.asarray(out)
