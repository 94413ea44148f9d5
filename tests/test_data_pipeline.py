"""Input pipeline over the embedded benchmark through TFDS: batch shapes, padding sides, label masks, two-process
slicing, determinism, resumable state, evaluation padding, Test_Set pose choice."""

import dataclasses
import functools

import numpy as np
import pytest

from vkd_jax.benchmarks.mllmu import generator as synthetic
from vkd_jax.benchmarks.mllmu.prompts import profile_examples
from vkd_jax.data import pipeline
from vkd_jax.data.pipeline import InputPipeline, PipelineConfig
from vkd_jax.data.tokenizer import train_tokenizer

pytestmark = pytest.mark.integration

_pipeline = functools.partial(InputPipeline, examples=profile_examples)  # MLLMU-Bench profiles

WORLD = synthetic.WorldConfig(num_people=20, num_celebrities=4, num_facts=3, values_per_fact=6, ft_poses=2,
                              test_poses=3)
BASE = PipelineConfig(tasks=("classification", "ft"), global_batch_size=8, image_seq_length=16,
                      image=pipeline.image_config(32), length_buckets=(96, 128, 192), num_threads=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    synthetic.generate(root / "manual", seed=0, cfg=WORLD)
    tok = train_tokenizer(synthetic.tokenizer_texts(root / "manual"), root / "tok")
    from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
    srcs = {c: mllmu_bench.load(c, root / "data", root / "manual") for c in ("ft_Data", "forget_10", "Test_Set")}
    return tok, srcs


def _key(b, i):
    return (int(b["row"][i]), str(b["task"][i]), str(b["type"][i]), int(b["item"][i]))


def _eq(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_shapes_and_label_masks(env):
    tok, srcs = env
    p = _pipeline(srcs["ft_Data"], tok, BASE)
    b = next(iter(p))
    B, T = b["input_ids"].shape
    assert B == 8 and T in BASE.length_buckets
    assert b["pixel_values"].shape == (8, 3, 32, 32) and b["pixel_values"].dtype == np.float32
    for k, dt in (("input_ids", np.int32), ("attention_mask", np.int32), ("labels", np.int32),
                  ("loss_mask", np.float32), ("positions", np.int32)):
        assert b[k].shape == (B, T) and b[k].dtype == dt, k
    for i in range(B):
        n = int(b["attention_mask"][i].sum())
        assert b["attention_mask"][i, :n].all()  # right padding
        ids, lm = b["input_ids"][i, :n], b["loss_mask"][i, :n] > 0
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and lm[-1]
        assert (b["labels"][i][b["loss_mask"][i] > 0] == b["input_ids"][i][b["loss_mask"][i] > 0]).all()
        assert tok.decode(ids[lm]).strip() == b["answer"][i]  # labels cover exactly the answer (+ EOS)
        assert ((ids == tok.image_token_id).sum() == 16) == bool(b["has_image"][i])
        if not b["has_image"][i]:
            assert not b["pixel_values"][i].any()
        else:
            assert b["pixel_values"][i].std() > 0.05
        if b["task"][i] == "classification":
            assert b["correct_letter"][i] in "ABCD" and b["answer"][i] == b["correct_letter"][i]


def test_left_padding_for_generation_prompts(env):
    tok, srcs = env
    cfg = dataclasses.replace(BASE, tasks=("generation",), train=False, padding_side="left", shuffle=False,
                              drop_remainder=False, types=("Image_Textual",))
    b = next(iter(_pipeline(srcs["forget_10"], tok, cfg)))
    am, valid = b["attention_mask"], b["valid"]
    assert valid.sum() == 6 and am[valid, -1].all() and not am[~valid].any() and not b["loss_mask"].any()
    for i in np.flatnonzero(valid):
        n = int(am[i].sum())
        assert not am[i, :-n].any()
        assert (b["positions"][i, -n:] == np.arange(n)).all()
        text = tok.decode(b["input_ids"][i][am[i] > 0])
        assert text.endswith("in one sentence accurately in ENGLISH.\nASSISTANT: ")  # the official trailing space


def test_two_processes_read_disjoint_complete_slices(env):
    tok, srcs = env
    cfg = dataclasses.replace(BASE, drop_remainder=False, seed=3)
    full = _pipeline(srcs["ft_Data"], tok, cfg)
    parts = [_pipeline(srcs["ft_Data"], tok, dataclasses.replace(cfg, process_index=i, process_count=2))
             for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(full) == -(-len(full.examples) // 8)
    seen = [[], []]
    for bf, b0, b1 in zip(full, *parts):
        assert b0["input_ids"].shape == b1["input_ids"].shape == (4, bf["input_ids"].shape[1])
        for k in bf:  # the global batch is the concatenation of the process-local batches
            assert np.array_equal(np.concatenate([b0[k], b1[k]]), bf[k]), k
        for j, b in enumerate((b0, b1)):
            seen[j] += [_key(b, i) for i in range(4) if b["valid"][i]]
    everything = {(e["row"], e["task"], e["type"], e["item"]) for e in full.examples}
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(everything)


def test_deterministic_per_seed_and_reshuffled_per_epoch(env):
    tok, srcs = env
    cfg = dataclasses.replace(BASE, num_epochs=2)
    a, b = (list(_pipeline(srcs["forget_10"], tok, cfg)) for _ in range(2))
    assert len(a) == len(b) > 2 and all(_eq(x, y) for x, y in zip(a, b))
    c = list(_pipeline(srcs["forget_10"], tok, dataclasses.replace(cfg, seed=1)))
    assert not all(_eq(x, y) for x, y in zip(a, c))
    n = len(a) // 2
    order = [_key(x, i) for x in a for i in range(8)]
    assert order[:n * 8] != order[n * 8:]


def test_state_restore_resumes_exactly(env):
    tok, srcs = env
    cfg = dataclasses.replace(BASE, num_epochs=None)  # infinite, as training runs
    p = _pipeline(srcs["ft_Data"], tok, cfg)
    it = iter(p)
    for _ in range(3):
        next(it)
    state = p.get_state()
    expected = [next(it) for _ in range(3)]
    q = _pipeline(srcs["ft_Data"], tok, cfg)
    q.set_state(state)  # before iterating, as after a restart
    assert all(_eq(x, next(q)) for x in expected)
    with pytest.raises(ValueError, match="seed"):
        _pipeline(srcs["ft_Data"], tok, dataclasses.replace(cfg, seed=9)).set_state(state)


def test_eval_pads_last_batch_with_invalid_rows(env):
    tok, srcs = env
    cfg = dataclasses.replace(BASE, tasks=("cloze",), train=False, shuffle=False, drop_remainder=False,
                              global_batch_size=5)
    p = _pipeline(srcs["forget_10"], tok, cfg)
    batches = list(p)
    n = len(p.examples)
    assert n % 5 and len(batches) == -(-n // 5)
    assert sum(int(b["valid"].sum()) for b in batches) == n
    last = batches[-1]
    assert not last["attention_mask"][~last["valid"]].any() and (last["row"][~last["valid"]] == -1).all()
    assert {b["input_ids"].shape[0] for b in batches} == {5}


def test_test_set_restricted_to_forget_ids_with_seeded_pose(env):
    tok, srcs = env
    ids = pipeline.forget_ids(srcs["forget_10"])
    cfg = dataclasses.replace(BASE, tasks=("classification",), types=("Image_Textual",), train=False,
                              shuffle=False, drop_remainder=False, ids=ids)
    p = _pipeline(srcs["Test_Set"], tok, cfg)
    assert {e["id"] for e in p.examples} == set(ids)
    b1 = list(p)
    b2 = list(_pipeline(srcs["Test_Set"], tok, cfg))
    assert all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(b1, b2))
    poses = [list(_pipeline(srcs["Test_Set"], tok, dataclasses.replace(cfg, seed=s)))[0]["pixel_values"][0]
             for s in range(6)]
    assert len({p.tobytes() for p in poses}) > 1  # the seed picks among the profile's poses


def test_too_long_example_names_it(env):
    tok, srcs = env
    p = _pipeline(srcs["forget_10"], tok, dataclasses.replace(BASE, max_len=20))
    with pytest.raises(ValueError, match="longer than the largest length bucket 20"):
        next(iter(p))


def test_config_errors(env):
    tok, srcs = env
    with pytest.raises(ValueError, match="process_count"):
        PipelineConfig(global_batch_size=7, process_count=2)
    with pytest.raises(ValueError, match="unknown types"):
        PipelineConfig(types=("Video",))
    with pytest.raises(ValueError, match="unknown MLLMU-Bench tasks"):  # the benchmark's example builder checks
        _pipeline(srcs["forget_10"], tok, dataclasses.replace(BASE, tasks=("vqa",)))
    with pytest.raises(ValueError, match="padding_side"):
        PipelineConfig(padding_side="middle")
    with pytest.raises(ValueError, match="cls_answer"):
        PipelineConfig(cls_answer="value")


def test_resampled_options_hide_the_person_but_keep_the_answer(env):
    """Each time an MC item is served it gets fresh distractors and order; the letter still names the true value;
    the draw is fixed by the seed and stream position (so resuming replays it)."""
    tok, srcs = env
    src = srcs["forget_10"]
    cfg = dataclasses.replace(BASE, tasks=("classification",), types=("Image_Textual",), resample_options=True,
                              num_epochs=4, shuffle=False, global_batch_size=2, drop_remainder=False)
    p = _pipeline(src, tok, cfg)
    ex0 = p.examples[0]
    true = ex0["options"][ex0["correct_letter"]]
    served = [b for b in p if b["item"][0] == ex0["item"] and b["id"][0] == ex0["id"]]
    assert len(served) == 4
    texts = [tok.decode([int(t) for t in b["input_ids"][0] if t not in (tok.pad_id, tok.image_token_id)])
             for b in served]
    assert len(set(texts)) > 1  # different option sets on different epochs
    for b, text in zip(served, texts):
        ans = tok.decode([int(t) for t, m in zip(b["input_ids"][0], b["loss_mask"][0]) if m]).strip()
        letter = ans[0]
        line = [x for x in text.splitlines() if x.startswith(f"{letter}: ")][0]
        assert line == f"{letter}: {true}"
    again = [b for b in _pipeline(src, tok, cfg) if b["item"][0] == ex0["item"] and b["id"][0] == ex0["id"]]
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(served, again))
    plain = _pipeline(src, tok, dataclasses.replace(cfg, resample_options=False))
    b = next(iter(plain))
    assert np.array_equal(b["input_ids"][0][: len(ex0["input_ids"])], ex0["input_ids"])


@pytest.mark.parametrize("resample", [False, True])
def test_option_answers_name_the_true_value(env, resample):
    """cls_answer="option": MC items are trained to answer with the correct option's text (fresh options or not),
    and the listed options still contain it exactly once."""
    tok, srcs = env
    cfg = dataclasses.replace(BASE, tasks=("classification",), resample_options=resample, cls_answer="option",
                              num_epochs=2, shuffle=False, global_batch_size=4, drop_remainder=False)
    p = _pipeline(srcs["forget_10"], tok, cfg)
    n = 0
    for b in p:
        for i in np.nonzero(b["valid"])[0]:
            ex = p.examples[[k for k, e in enumerate(p.examples)
                             if (e["row"], e["item"], e["type"]) == (b["row"][i], b["item"][i], b["type"][i])][0]]
            true = ex["options"][ex["correct_letter"]]
            ans = tok.decode([int(t) for t, m in zip(b["input_ids"][i], b["loss_mask"][i]) if m]).strip()
            assert ans == true, (ans, true)
            text = tok.decode([int(t) for t in b["input_ids"][i] if t not in (tok.pad_id, tok.image_token_id)])
            assert sum(line in (f"{L}: {true}" for L in "ABCD") for line in text.splitlines()) == 1
            n += 1
    assert n == 2 * len(p.examples)
