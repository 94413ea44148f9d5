"""Hub names where the config wants a local folder: resolved offline from the local Hugging Face cache, an existing
local folder first, a name that is not cached a clear error with the command that downloads it."""

import json

import pytest

from vkd_jax.hub import local_folder, resolve_hub_names
from vkd_jax.models.config import ConfigError

pytestmark = pytest.mark.unit


def test_repo_ids_resolve_from_the_local_cache_only(tmp_path, monkeypatch, hf_cache_put):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for folder, name in ((tmp_path / "m", "config.json"), (tmp_path / "d" / "forget_10", "x.parquet")):
        folder.mkdir(parents=True)
        (folder / name).write_text(json.dumps({}))
    model = hf_cache_put(cache, "tiny-org/llava-tiny-hf", "model", tmp_path / "m")
    data = hf_cache_put(cache, "tiny-org/MLLMU-Bench", "dataset", tmp_path / "d")
    assert local_folder("tiny-org/llava-tiny-hf", "hf_dir", "model") == model
    import ml_collections

    cfg = ml_collections.ConfigDict({"hf_dir": "tiny-org/llava-tiny-hf",
                                     "data": {"manual_dir": "tiny-org/MLLMU-Bench"}})
    resolve_hub_names(cfg)
    assert (cfg.hf_dir, cfg.data.manual_dir) == (model, data)
    partial = ml_collections.ConfigDict({"seed": 0})  # configs without those fields are left as they are
    resolve_hub_names(partial)
    assert partial.to_dict() == {"seed": 0}
    # a local folder is a local folder, even when it could be a repo id; paths and URIs are left alone
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-org" / "llava-tiny-hf").mkdir(parents=True)
    assert local_folder("tiny-org/llava-tiny-hf", "hf_dir", "model") == "tiny-org/llava-tiny-hf"
    for v in ("", "/abs/path", "gs://bucket/llava", "a/b/c"):
        assert local_folder(v, "hf_dir", "model") == v
    with pytest.raises(ConfigError, match=r"config.data.manual_dir='tiny-org/missing'.*not in the local cache.*"
                                          r"hf download tiny-org/missing --repo-type dataset"):
        local_folder("tiny-org/missing", "data.manual_dir", "dataset")
