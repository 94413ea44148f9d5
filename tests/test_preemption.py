"""SIGTERM during a training stage saves the step in flight at the next step boundary and stops with Preempted; the
rerun continues bitwise as if uninterrupted (vkd_jax.preemption). Outside a training loop SIGTERM stops at once."""

import os
import signal

import pytest
from conftest import STAGE_STEPS, Stream, assert_params_equal, run_unlearn

from vkd_jax import preemption
from vkd_jax.digests import DIGESTS_FILE

pytestmark = pytest.mark.integration


class TermAt(Stream):
    """A stream whose batch `at` (of this process's run) arrives with a SIGTERM to the process."""

    def __init__(self, seed, at):
        super().__init__(seed)
        self.at, self.served = at, 0

    def __next__(self):
        if self.served == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.served += 1
        return super().__next__()


@pytest.fixture
def sigterm_handler():
    old = signal.getsignal(signal.SIGTERM)
    preemption.install()
    preemption.reset()
    yield
    signal.signal(signal.SIGTERM, old)
    preemption.reset()


def test_sigterm_saves_the_step_in_flight_and_the_rerun_is_bitwise(tmp_path, sigterm_handler,
                                                                   uninterrupted_unlearn):
    _, want = uninterrupted_unlearn
    # the signal arrives while batch 2 is fetched (step 3, between the checkpoints at 2 and 4): step 3 is saved
    with pytest.raises(preemption.Preempted, match=rf"at step 3 of {STAGE_STEPS}: saved in .*unlearn/ckpt/3"):
        run_unlearn(tmp_path, TermAt(1, at=2))
    assert (tmp_path / "unlearn" / "ckpt" / "3" / DIGESTS_FILE).is_file()
    assert not (tmp_path / "unlearn" / "params").exists()
    preemption.reset()
    assert_params_equal(run_unlearn(tmp_path).params, want)


def test_sigterm_outside_a_training_loop_stops_at_once(sigterm_handler):
    with pytest.raises(preemption.Preempted, match="outside a training step"):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes of the main thread
            sum(range(100))
