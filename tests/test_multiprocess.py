"""A real multi-process run on one machine: 2 CPU processes (2 devices each) joined through jax.distributed on
127.0.0.1 train VKD on the tiny model from their own batch slices; one of them gets SIGTERM, both save the same step
together and stop (Preempted), restore it and finish; the result must equal one process (4 devices) on the whole
batches. Then a LoRA baseline with dropout, the processes salted differently: the same merged weights."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # minutes: end to end / several processes (CI runs it)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_mp_worker.py")
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, hash_seed: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED=str(hash_seed))
    return env


def _wait(procs, logs):
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        log.seek(0)
        assert p.returncode == 0, f"{p.args[2:]} exited {p.returncode}:\n{log.read()[-4000:]}"


def test_two_processes_match_one(tmp_path, ukit):
    port = _free_port()
    logs = [open(tmp_path / f"log{i}.txt", "w+") for i in range(3)]
    cmd = [sys.executable, WORKER, str(tmp_path)]
    procs = [subprocess.Popen(cmd + ["multi", str(port), str(i), "2"], env=_env(2, 1 + i), stdout=logs[i],
                              stderr=subprocess.STDOUT) for i in range(2)]
    procs.append(subprocess.Popen(cmd + ["single"], env=_env(4, 3), stdout=logs[2], stderr=subprocess.STDOUT))
    _wait(procs, logs)
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert int(multi["processes"]) == 2 and int(single["processes"]) == 1
    assert int(multi["step"]) == int(single["step"]) == 4
    # SIGTERM reached process 1 only; both stopped at the same step, saved it together and resumed from it
    stops = [(tmp_path / f"preempted{i}.txt").read_text().split("\n", 1) for i in range(2)]
    assert stops[0][0] == stops[1][0] and 2 <= int(stops[0][0]) <= 4, stops
    assert f"at step {stops[0][0]} of 4: saved in" in stops[0][1]
    assert int(stops[0][0]) in multi["ckpt_steps"] and 4 in multi["ckpt_steps"]
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-6)
    _, init = ukit.tiny_params(seed=0)
    init = {k: np.asarray(v) for k, v in init.items()}
    keys = [k for k in multi.files if k.startswith("param/")]
    assert sorted(keys) == sorted(k for k in single.files if k.startswith("param/")) and len(keys) == len(init)
    moved = 0
    for k in keys:
        name, a, b = k[len("param/"):], multi[k], single[k]
        if name.startswith(("language_model", "lm_head")):  # frozen by VKD: untouched everywhere, bitwise
            np.testing.assert_array_equal(a, init[name])
            np.testing.assert_array_equal(b, init[name])
            continue
        # cross-process gloo all-reduces sum in another order than one process: float32 rounding only
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
        moved = max(moved, float(np.abs(b - init[name]).max()))
    assert moved > 1e-2  # four steps at lr 1e-2 moved the visual params far beyond the tolerance
    # the final params both processes saved together: one complete folder, no temp folders left, the same values
    from vkd_jax.models.hf_io import flat_params
    from vkd_jax.models.orbax_io import load_model_orbax
    saved = {k: np.asarray(v) for k, v in flat_params(load_model_orbax(tmp_path / "final")).items()}
    assert sorted("param/" + k for k in saved) == sorted(keys)
    for k in keys:
        np.testing.assert_array_equal(saved[k[len("param/"):]], multi[k], err_msg=k)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    # LoRA with dropout, 3 processes with 3 string-hash salts: the merged weights of both multi processes bitwise
    # equal, and equal to one process up to the all-reduce order (different dropout masks would move them far apart)
    lora = [np.load(tmp_path / f) for f in ("lora_multi0.npz", "lora_multi1.npz", "lora_single0.npz")]
    llm = [k for k in lora[0].files if k.startswith("language_model") and k.endswith("kernel")]
    assert llm and sorted(lora[0].files) == sorted(lora[2].files)
    assert max(float(np.abs(lora[2][k] - init[k]).max()) for k in llm) > 1e-3  # the adapters moved the LLM
    for k in lora[0].files:
        np.testing.assert_array_equal(lora[0][k], lora[1][k], err_msg=k)
        np.testing.assert_allclose(lora[0][k], lora[2][k], rtol=1e-5, atol=1e-6, err_msg=k)
