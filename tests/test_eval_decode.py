"""Our jitted greedy decoding (KV cache, while_loop, early EOS exit) against transformers `generate(do_sample=False)`
on the same tiny random LLaVA and the same left-padded prompts, with and without images."""

import numpy as np
import pytest
import torch

import vkd_jax
from vkd_jax.eval.decode import greedy_decode, strip_after_eos

pytestmark = pytest.mark.integration

PAD = 0
N_NEW = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    # A random model could generate the image token, which HF refuses without an image: give it logit 0, below the
    # maximum of the other 95 random logits.
    with torch.no_grad():
        hf.lm_head.weight[hf.config.image_token_index] = 0
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d)
    return hf, vkd_jax.load_hf(d)


def _hf_generate(hf, ids, px, mask, eos, n_new=N_NEW):
    kw = {} if px is None else {"pixel_values": torch.tensor(px)}  # HF fails on an explicit pixel_values=None
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n_new,
                          do_sample=False, eos_token_id=eos, pad_token_id=PAD, **kw)
    return out[:, ids.shape[1]:].numpy()


def _inputs(hf, image_rows, batch=3):
    """Left-padded prompts of different lengths (text lengths 5, 9, 7, ...), image blocks in `image_rows`."""
    c = hf.config
    rng = np.random.default_rng(3)
    rows = []
    for b in range(batch):
        r = [1] + list(rng.integers(3, c.image_token_index - 1, size=(5, 9, 7)[b % 3]))
        rows.append(r[:2] + [c.image_token_index] * c.image_seq_length + r[2:] if b in image_rows else r)
    t = max(map(len, rows))
    ids, mask = np.zeros((batch, t), np.int64), np.zeros((batch, t), np.int64)
    for b, r in enumerate(rows):
        ids[b, t - len(r):], mask[b, t - len(r):] = r, 1
    size = c.vision_config.image_size
    px = rng.standard_normal((len(image_rows), 3, size, size)).astype(np.float32)
    return ids, (px if image_rows else None), mask


@pytest.mark.parametrize("image_rows", [(0, 1, 2), ()], ids=["vqa", "qa"])
def test_greedy_tokens_equal_transformers_generate(models, image_rows):
    hf, ours = models
    ids, px, mask = _inputs(hf, image_rows)
    assert (mask[:, 0] == 0).any(), "the prompts should be left-padded to different lengths"
    free = greedy_decode(ours, ids, mask, px, max_new_tokens=N_NEW, eos_id=2, pad_id=PAD)
    ref = _hf_generate(hf, ids, px, mask, eos=2)
    assert free.shape == (3, N_NEW)
    for ours_row, ref_row in zip(strip_after_eos(free, 2), strip_after_eos(ref, 2)):
        assert ours_row == ref_row

    # Stop at EOS: make a token that row 0 produces mid-way the EOS; rows stop there, pad afterwards, as HF.
    eos = int(free[0, 4])
    stopped = greedy_decode(ours, ids, mask, px, max_new_tokens=N_NEW, eos_id=eos, pad_id=PAD)
    ref = _hf_generate(hf, ids, px, mask, eos=eos)
    k = list(free[0]).index(eos)
    np.testing.assert_array_equal(stopped[0, :k + 1], free[0, :k + 1])
    assert (stopped[0, k + 1:] == PAD).all()
    assert strip_after_eos(stopped, eos) == strip_after_eos(ref, eos)
    for b in range(3):
        row = list(stopped[b])
        if eos in row:
            assert all(t == PAD for t in row[row.index(eos) + 1:])


def test_early_exit_when_every_row_is_done(models):
    """With EOS = the first generated token of every row, the loop ends after one step: all later slots pad."""
    hf, ours = models
    ids, px, mask = _inputs(hf, (0,), batch=1)
    first = int(greedy_decode(ours, ids, mask, px, max_new_tokens=1, eos_id=-1, pad_id=PAD)[0, 0])
    out = greedy_decode(ours, ids, mask, px, max_new_tokens=N_NEW, eos_id=first, pad_id=PAD)
    assert out[0, 0] == first and (out[0, 1:] == PAD).all()


def test_a_row_decodes_the_same_alone_and_in_a_batch(models):
    hf, ours = models
    ids, px, mask = _inputs(hf, ())
    batch = greedy_decode(ours, ids, mask, None, max_new_tokens=N_NEW, eos_id=2, pad_id=PAD)
    n = int(mask[1].sum())
    alone = greedy_decode(ours, ids[1:2, -n:], mask[1:2, -n:], None, max_new_tokens=N_NEW, eos_id=2, pad_id=PAD)
    np.testing.assert_array_equal(alone[0], batch[1])


def test_right_padding_is_refused(models, hf_tiny):
    hf, ours = models
    ids, _, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(), pad="right")
    with pytest.raises(ValueError, match="LEFT-padded"):
        greedy_decode(ours, ids, mask, None, max_new_tokens=2, eos_id=2, pad_id=PAD)
