"""Damaged checkpoints are detected and named before any step runs (vkd_jax.digests): stage params, training
checkpoints, saliency masks; a checkpoint finished but never sealed is run again; a full disk during a checkpoint is
one error line and the rerun resumes; two runs on one work directory at once both finish with the same params. Every
interrupted run equals the uninterrupted one bitwise."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import STAGE_EVERY, assert_params_equal, flip_bytes, run_unlearn, truncate

from vkd_jax.digests import DIGESTS_FILE, DamagedCheckpointError, verify_digests
from vkd_jax.unlearn.stages import load_masks, save_masks

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_damaged_stage_params_are_refused_naming_the_folder(tmp_path, uninterrupted_unlearn):
    done, want = uninterrupted_unlearn
    shutil.copytree(done, tmp_path, dirs_exist_ok=True)
    final = tmp_path / "unlearn" / "params"
    assert (final / DIGESTS_FILE).is_file()
    assert_params_equal(run_unlearn(tmp_path).params, want)  # finished before: restored once its digests check
    keep = tmp_path / "kept"
    shutil.copytree(final, keep)
    hit = flip_bytes(final)
    with pytest.raises(DamagedCheckpointError, match=rf"{final}: .*{os.path.relpath(hit, final)} is altered"):
        run_unlearn(tmp_path)
    for damage, says in ((truncate, "bytes"), (lambda f: os.remove(f / DIGESTS_FILE), f"no {DIGESTS_FILE}")):
        shutil.rmtree(final)
        shutil.copytree(keep, final)
        damage(final)  # cut short; or no digests, so it cannot be checked: not loaded either
        with pytest.raises(DamagedCheckpointError, match=rf"{final}: .*{says}"):
            run_unlearn(tmp_path)


def test_damaged_training_checkpoint_stops_the_resume_and_an_unsealed_one_is_rerun(tmp_path, uninterrupted_unlearn):
    _, want = uninterrupted_unlearn
    run_unlearn(tmp_path / "b", stop_after=STAGE_EVERY + 1)  # killed: the step-2 checkpoint saved and sealed
    step = tmp_path / "b" / "unlearn" / "ckpt" / str(STAGE_EVERY)
    assert (step / DIGESTS_FILE).is_file()
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    flip_bytes(step)
    with pytest.raises(DamagedCheckpointError, match=f"{step}: this training checkpoint is damaged"):
        run_unlearn(tmp_path / "b")
    # finished by orbax but killed before its digests were written: deleted, its steps run again from scratch
    os.remove(tmp_path / "c" / "unlearn" / "ckpt" / str(STAGE_EVERY) / DIGESTS_FILE)
    assert_params_equal(run_unlearn(tmp_path / "c").params, want)


def test_damaged_masks_are_refused(tmp_path):
    masks = {"vision_tower/a": np.arange(64, dtype=np.float32).reshape(8, 8) % 3 == 0,
             "projector/b": np.ones((300,), bool)}
    save_masks(masks, str(tmp_path / "final"))
    back = load_masks(str(tmp_path / "final"))
    for k in masks:
        np.testing.assert_array_equal(np.asarray(back[k]), masks[k])
    truncate(tmp_path / "final")
    with pytest.raises(DamagedCheckpointError, match="masks folder is damaged"):
        load_masks(str(tmp_path / "final"))


def _stage_script(body: str, workdir) -> str:
    return STAGE_SCRIPT.format(tests=os.path.join(ROOT, "tests"), workdir=str(workdir), body=body)


def test_full_disk_during_a_checkpoint_is_one_error_line_and_the_rerun_resumes(tmp_path, uninterrupted_unlearn):
    """The disk fills while the step-4 checkpoint is written (from fetch 4 of 6 on; checkpoints every 2 steps): one
    `error:` line naming the checkpoint and the newest intact one, no traceback; the step-2 checkpoint is intact;
    the rerun after space is freed equals an uninterrupted run bitwise."""
    _, want = uninterrupted_unlearn
    # stdout/stderr are pipes: a file would be held to the same size limit
    r = subprocess.run([sys.executable, "-c", _stage_script(FULL_DISK, tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr and "ERROR:" not in r.stderr, r.stderr[-3000:]
    ckpt = tmp_path / "unlearn" / "ckpt"
    assert f"{ckpt / '4'}: writing this training checkpoint failed" in errors[0], errors
    assert "File too large" in errors[0] and "step 2 is the newest intact" in errors[0]
    verify_digests(ckpt / "2")
    assert_params_equal(run_unlearn(tmp_path).params, want)


def test_two_runs_on_one_work_directory_at_once_both_finish_with_the_same_params(tmp_path, uninterrupted_unlearn):
    _, want = uninterrupted_unlearn
    script = _stage_script("run()", tmp_path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    assert_params_equal(run_unlearn(tmp_path).params, want)  # the params folder they left: the same values


STAGE_SCRIPT = r'''
import sys
sys.path.insert(0, {tests!r})
from conftest import Stream, run_unlearn
from vkd_jax.cli import guarded


def run(forget=None):
    with guarded(["run"]):
        run_unlearn({workdir!r}, forget)


{body}
'''

FULL_DISK = '''
import resource, signal


class FullAt(Stream):
    """From fetch `at` on, no file of this process may grow past 512 bytes: the disk is full."""

    def __init__(self, seed, at):
        super().__init__(seed)
        self.at, self.served = at, 0

    def __next__(self):
        if self.served == self.at:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))
        self.served += 1
        return super().__next__()


run(FullAt(1, 4))
'''
