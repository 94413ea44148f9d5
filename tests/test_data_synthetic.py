"""The embedded benchmark generator: determinism, schema, splits, Test_Set poses, and that identity is visual."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vkd_jax.benchmarks.mllmu import generator as synthetic
from vkd_jax.benchmarks.mllmu import reader as mllmu_bench
from vkd_jax.benchmarks.mllmu.generator import WorldConfig
from vkd_jax.errors import DataError

pytestmark = pytest.mark.integration

SMALL = WorldConfig(num_people=40, num_celebrities=6, num_facts=3, values_per_fact=6, ft_poses=2, test_poses=2)


def _table(d, config):
    return pq.read_table(d / config / "train-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    synthetic.generate(d, seed=0, cfg=SMALL)
    return d


def test_deterministic_from_seed(world_dir, tmp_path):
    synthetic.generate(tmp_path / "again", seed=0, cfg=SMALL)
    synthetic.generate(tmp_path / "other", seed=1, cfg=SMALL)
    for config in mllmu_bench.CONFIGS:
        assert _table(world_dir, config) == _table(tmp_path / "again", config), config
    assert _table(world_dir, "Full_Set") != _table(tmp_path / "other", "Full_Set")


def test_all_configs_valid_in_the_benchmark_schema(world_dir):
    sizes = {}
    for config in mllmu_bench.CONFIGS:
        rows = list(mllmu_bench.iter_profiles(world_dir, config))  # full validation, raises on any bad row
        sizes[config] = len(rows)
        cols = set(pq.read_schema(world_dir / config / "train-00000-of-00001.parquet").names)
        assert set(mllmu_bench.required_columns(config)) <= cols, config
    n = SMALL.num_people
    assert sizes["Full_Set"] == sizes["Test_Set"] == n and sizes["Retain_Set"] == SMALL.num_celebrities
    assert sizes["ft_Data"] == n * SMALL.ft_poses
    assert (sizes["forget_5"], sizes["forget_10"], sizes["forget_15"]) == (2, 4, 6)
    row = _table(world_dir, "Full_Set")[0]
    ct = row["Classification_Task"]
    assert len(ct["Image_Textual_Questions"]) == len(ct["Pure_Text_Questions"]) == SMALL.num_facts
    q = ct["Pure_Text_Questions"][0]
    assert json.loads(row["biography"])["Name"] in q["Question"]
    assert q["Options"][q["Correct_Answer"]] in row["biography"]
    assert {t["Type"] for t in row["Generation_Task"]} == {t["Type"] for t in row["Mask_Task"]} == {
        "Image_Textual", "Pure_Text"}
    assert all("__" in t["Question"] for t in row["Mask_Task"])


def test_forget_and_retain_partition_full_set(world_dir):
    full = [r["ID"] for r in _table(world_dir, "Full_Set")]
    prev = set()
    for pct in (5, 10, 15):
        forget = [r["ID"] for r in _table(world_dir, f"forget_{pct}")]
        retain = [r["ID"] for r in _table(world_dir, f"retain_{100 - pct}")]
        assert not set(forget) & set(retain) and sorted(forget + retain) == sorted(full)
        assert prev <= set(forget)  # nested, as in the real benchmark
        prev = set(forget)
    celebs = {r["ID"] for r in _table(world_dir, "Retain_Set")}
    assert not celebs & set(full)


def test_test_set_has_new_poses_of_the_same_ids(world_dir):
    full = {r["ID"]: r for r in _table(world_dir, "Full_Set")}
    test = _table(world_dir, "Test_Set")
    assert [r["ID"] for r in test] == list(full)
    for r in test:
        assert len(r["images"]) == SMALL.test_poses and "image" not in r
        pose_bytes = {im["bytes"] for im in r["images"]}
        assert full[r["ID"]]["image"]["bytes"] not in pose_bytes and len(pose_bytes) == SMALL.test_poses
        assert r["Classification_Task"] == full[r["ID"]]["Classification_Task"]
    ft_ids = [r["ID"] for r in _table(world_dir, "ft_Data")]
    assert sorted(set(ft_ids)) == sorted(full) and all(ft_ids.count(i) == SMALL.ft_poses for i in full)


def test_identity_is_visual_and_survives_poses():
    world = synthetic.build_world(SMALL, seed=0)
    acc = synthetic.identity_nn_accuracy(world, poses=2)
    assert acc > 0.5, acc  # chance is 1/46
    # no single attribute identifies a person: every background colour is shared by several people
    backgrounds = np.bincount([p["code"][0] for p in world["people"]])
    assert backgrounds.max() < len(world["people"]) / 2 and (backgrounds >= 2).sum() >= 3
    codes = np.stack([p["code"] for p in world["people"]])
    dist = (codes[:, None] != codes[None]).sum(-1) + np.eye(len(codes), dtype=int) * 99
    assert dist.min() >= SMALL.min_code_distance


def test_poses_differ_from_canonical_but_people_differ_more():
    world = synthetic.build_world(SMALL, seed=0)
    a, b = world["people"][0], world["people"][1]
    img = lambda p, rng=None: np.asarray(synthetic.render(p["code"], SMALL, rng), np.float32)
    canon = img(a)
    pose = img(a, np.random.default_rng(5))
    assert np.abs(canon - pose).mean() > 1.0  # a pose is a different image
    assert not np.array_equal(img(a), img(b))


def test_generic_images_are_further_people_and_change_nothing_else(world_dir, tmp_path):
    from vkd_jax.data.sources import ImageFolderSource

    cfg = WorldConfig(**{**SMALL.__dict__, "num_generic": 5, "generic_poses": 3})
    synthetic.generate(tmp_path / "g", seed=0, cfg=cfg)
    for config in mllmu_bench.CONFIGS:  # drawn after the world, from their own generator
        assert _table(world_dir, config) == _table(tmp_path / "g", config), config
    world = json.loads((tmp_path / "g" / "world.json").read_text())
    generic = np.asarray(world["generic_codes"])
    people = np.asarray([p["code"] for p in world["people"]])
    assert generic.shape == (5, people.shape[1])
    dist = (generic[:, None, :] != np.concatenate([people, generic])[None]).sum(-1)
    assert (np.sort(dist, axis=1)[:, 1] >= cfg.min_code_distance).all()  # [:, 0] is the code itself
    assert (dist[:, :len(people)] >= cfg.min_code_distance).all()  # nobody of any split
    src = ImageFolderSource(str(tmp_path / "g" / synthetic.GENERIC_DIR))
    assert len(src) == 15
    row = src[4]
    assert row["image"]["path"] == "g00001_1.png" and row["image"]["bytes"][:4] == b"\x89PNG"
    qa = json.loads(row["metadata"])[0]
    assert qa["Type"] == "Image_Textual" and qa["Question"] == ImageFolderSource.CAPTION_QUESTION
    assert qa["Answer"] == synthetic._appearance(generic[1], cfg)  # the caption says what the image shows
    assert not (world_dir / synthetic.GENERIC_DIR).exists()  # num_generic=0: none


def test_image_folder_source_errors_name_the_folder(tmp_path):
    from vkd_jax.data.sources import ImageFolderSource

    with pytest.raises(DataError, match="nowhere"):
        ImageFolderSource(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty.*holds no images"):
        ImageFolderSource(str(tmp_path / "empty"))
    d = tmp_path / "imgs"
    d.mkdir()
    for n in ("a.png", "b.jpg"):
        (d / n).write_bytes(b"x")
    src = ImageFolderSource(str(d))  # no captions.json: a placeholder pair (only the image is read)
    assert [src[i]["image"]["path"] for i in range(2)] == ["a.png", "b.jpg"]
    assert json.loads(src[0]["metadata"])[0]["Answer"] == ImageFolderSource.PLACEHOLDER[1]
    (d / "captions.json").write_text(json.dumps({"a.png": "a cat"}))
    with pytest.raises(ValueError, match=r"captions.json: no caption for 1 image.*b\.jpg"):
        ImageFolderSource(str(d))
    (d / "captions.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="captions.json: not a JSON object"):
        ImageFolderSource(str(d))


def test_a_benchmark_folder_refuses_another_world(tmp_path):
    """world.json guards the generated benchmark itself (also where no shared/pipeline.json exists yet)."""
    import dataclasses
    import json

    from vkd_jax.benchmarks.base import check_world
    from vkd_jax.benchmarks.mllmu.generator import WorldConfig

    w = WorldConfig()
    path = tmp_path / "world.json"
    path.write_text(json.dumps({"seed": 0, "config": dataclasses.asdict(w)}))
    check_world(str(path), w, 0)
    other = dataclasses.replace(w, num_facts=w.num_facts - 1)
    with pytest.raises(ValueError, match=f"num_facts: {w.num_facts} \\(stored\\) vs {w.num_facts - 1} \\(config\\)"):
        check_world(str(path), other, 0)
    with pytest.raises(ValueError, match="world_seed: 0 \\(stored\\) vs 1 \\(config\\)"):
        check_world(str(path), w, 1)


def test_forget_splits_are_disjoint_blocks_and_split_0_is_forget_x(tmp_path, load_cfg):
    """Several forget splits unlearnt from one vanilla model: block k of the world's forget order; split 0 is the
    benchmark's own forget_10; each split's forget and retain profiles partition Full_Set; one too many is an error
    naming config.splits."""
    from vkd_jax.benchmarks import make_benchmark
    from vkd_jax.data.pipeline import as_str

    cfg = load_cfg("tiny")
    cfg.data.world.update(dict(num_people=20, num_celebrities=4, num_generic=0, ft_poses=2))
    bench = make_benchmark(cfg, str(tmp_path))
    assert bench.num_splits() == 10
    ids = lambda src: [as_str(src[i]["ID"]) for i in range(len(src))]  # noqa: E731
    everyone = set(ids(bench.load("Full_Set")))
    seen = set()
    for k in range(10):
        b = bench.with_split(k)
        forget, retain = ids(b.load("forget_10")), ids(b.load("retain_90"))
        assert len(forget) == 2 and set(forget) | set(retain) == everyone and not set(forget) & set(retain)
        assert not seen & set(forget)
        seen |= set(forget)
        sets = b.eval_sets()
        assert set(sets["test"].ids) == set(forget)
    assert seen == everyone
    assert ids(bench.with_split(0).load("forget_10")) == ids(bench.load("forget_10"))
    with pytest.raises(ValueError, match="config.splits: forget split 10 does not exist"):
        bench.with_split(10)


def test_the_stopping_rule_scores_a_held_out_pose_that_unlearning_never_sees(tmp_path, load_cfg):
    """stop_rule=floor: each forget person's last ft_Data pose is held out of the forget stream (masks and unlearn)
    and is what `stop_score` evaluates; without a rule every pose trains."""
    import dataclasses

    from vkd_jax.benchmarks import make_benchmark
    from vkd_jax.data.pipeline import as_str
    from vkd_jax.eval.runner import EvalConfig
    from vkd_jax.models.hf_io import model_from_flat_params
    from vkd_jax.run_models import build_model_config, initial_params

    cfg = load_cfg("tiny")
    cfg.data.world.update(dict(num_people=20, num_celebrities=4, num_generic=0, ft_poses=3))
    bench = make_benchmark(cfg, str(tmp_path))
    poses = bench.forget_poses()
    held, rest = poses.last_pose(held_out=True), poses.last_pose(held_out=False)
    forget = {as_str(r["ID"]) for r in (bench.load("forget_10")[i] for i in range(2))}
    assert len(poses) == 6 and len(held) == 2 and len(rest) == 4
    assert {as_str(held[i]["ID"]) for i in range(2)} == forget
    held_images = {bytes(held[i]["image"]["bytes"]) for i in range(2)}
    assert not held_images & {bytes(rest[i]["image"]["bytes"]) for i in range(4)}
    assert len(bench.stage_streams("unlearn")["forget"].source) == 6  # no rule: every pose
    cfg.stages.unlearn.stop_rule = "floor"
    ruled = make_benchmark(cfg, str(tmp_path))
    for stage in ("masks", "unlearn"):
        src = ruled.stage_streams(stage)["forget"].source
        assert len(src) == 4 and not held_images & {bytes(src[i]["image"]["bytes"]) for i in range(4)}
    mc = build_model_config(cfg, ruled.tokenizer)
    from vkd_jax.models.hf_io import abstract_model

    model = model_from_flat_params(abstract_model(mc)[0], initial_params(cfg, ruled, str(tmp_path), mc))
    score = ruled.stop_score(model, dataclasses.replace(EvalConfig(), batch_size=4, max_new_tokens=2,
                                                        cls_scoring="likelihood"))
    assert 0.0 <= score <= 100.0
