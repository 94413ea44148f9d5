"""One process of the multi-process test (tests/test_multiprocess.py); run as a script, never imported by pytest.

    python tests/_mp_worker.py OUT_DIR MODE [PORT PROCESS_ID NUM_PROCESSES]

MODE "multi": joins `jax.distributed` on 127.0.0.1:PORT; each process feeds only its rows of every global batch.
MODE "single": one process, all rows. Both build the tiny LLaVA from the same seed, put a (data=2, fsdp=2) mesh on
the 4 global devices and run VKD (visual tower trains, LLM frozen) for NUM_STEPS steps through `Trainer.fit`. In the
multi run process 1 receives SIGTERM while it fetches the batch of step TERM_AT: jax.distributed's preemption service
tells both processes the same step to stop at, they save it together and raise Preempted (each writes the step to
OUT_DIR/preempted<id>.txt); then `fit` restores that checkpoint (replacing the state in memory) and finishes.
Process 0 writes the gathered final params to OUT_DIR. First, both modes train a LoRA baseline (GA on `lora_llm`, LoRA
dropout on) for LORA_STEPS steps and write its merged params: the processes run with different PYTHONHASHSEED.
The XLA_FLAGS device count is set by the parent before this file imports jax.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from vkd_jax import distributed  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

GLOBAL_BATCH, NUM_STEPS, CKPT_EVERY, TERM_AT, LORA_STEPS = 8, 4, 2, 2, 2


class LocalSlice:
    """This process's rows of a deterministic global stream (what the data pipeline's process slicing gives)."""

    def __init__(self, seed, index, count, term_at=None):
        from conftest import Stream
        self.inner, self.index, self.count = Stream(seed, b=GLOBAL_BATCH), index, count
        self.term_at = term_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.term_at is not None and self.inner.i == self.term_at - 1:
            self.term_at = None
            os.kill(os.getpid(), signal.SIGTERM)  # jax.distributed's preemption notifier takes it
        b = next(self.inner)
        n = GLOBAL_BATCH // self.count
        return {k: v[self.index * n:(self.index + 1) * n] for k, v in b.items()}

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, st):
        self.inner.set_state(st)


def main(out_dir, mode, port=None, pid=0, nproc=1):
    if mode == "multi":
        distributed.initialize(distributed.detect(f"127.0.0.1:{port}", int(nproc), int(pid)))
    from conftest import ocfg, pcfg, tiny_params

    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.methods import make_method, method_config
    from vkd_jax.unlearn.train import Trainer

    assert jax.device_count() == 4 and jax.process_count() == (2 if mode == "multi" else 1), (
        jax.device_count(), jax.process_count())
    cfg, params = tiny_params(seed=0)
    params = {k: np.asarray(v) for k, v in params.items()}  # host values, identical on every process
    mesh = pt.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=1)))
    method = make_method("vkd", method_config("vkd", taps=("projector",), a_f=1.0, a_r=0.5, b_r=10.0))

    def trainer():
        return Trainer(cfg, params, method, partition_cfg=pcfg("visual"), optim_cfg=ocfg(lr=1e-2),
                       num_steps=NUM_STEPS, mesh=mesh)

    def streams(term_at=None):
        idx, cnt = jax.process_index(), jax.process_count()
        return {"forget": LocalSlice(1, idx, cnt, term_at if idx == 1 else None), "retain": LocalSlice(2, idx, cnt)}

    # a LoRA baseline with dropout: every process must draw the same dropout masks (keys from the param names);
    # first, since the preemption service answers its sync step once per process lifetime (a preempted run exits)
    lora = Trainer(cfg, params, make_method("ga"), partition_cfg=pcfg("lora_llm", lora=dict(rank=4, alpha=8.0,
                                                                                             dropout=0.25)),
                   optim_cfg=ocfg(lr=1e-2), num_steps=LORA_STEPS, mesh=mesh)
    lora.fit({"forget": streams()["forget"]}, log_every=1)
    merged = multihost_utils.process_allgather(lora.params(), tiled=True)
    np.savez(os.path.join(out_dir, f"lora_{mode}{jax.process_index()}.npz"),
             **{k: np.asarray(v) for k, v in merged.items()})
    ckpt_cfg = ml_collections.ConfigDict(dict(every_steps=CKPT_EVERY, keep=2, async_save=True))
    tr = trainer()
    if mode == "multi":
        from vkd_jax.preemption import Preempted

        workdir = os.path.join(out_dir, "work")
        try:
            tr.fit(streams(TERM_AT), workdir=workdir, ckpt_cfg=ckpt_cfg, log_every=1)
            raise AssertionError("SIGTERM did not stop the run")
        except Preempted as e:
            with open(os.path.join(out_dir, f"preempted{jax.process_index()}.txt"), "w") as f:
                f.write(f"{int(tr.state.step)}\n{e}\n")
        # resume as a restarted run would: the in-memory state is replaced by the checkpoint both processes saved
        # (the same Trainer object only to reuse its compiled step on 2 slow cores)
        last = tr.fit(streams(), workdir=workdir, ckpt_cfg=ckpt_cfg, log_every=1)
        restored = sorted(int(s) for s in os.listdir(os.path.join(workdir, "ckpt")) if s.isdigit())
    else:
        last = tr.fit(streams(), log_every=1)
        restored = []
    if mode == "multi":  # every process saves the final params together into one folder (the stage output)
        from vkd_jax.models.orbax_io import save_params_orbax
        save_params_orbax(tr.params(), cfg, os.path.join(out_dir, "final"), overwrite=True)
    full = multihost_utils.process_allgather(tr.params(), tiled=True)
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, f"{mode}.npz"), **{"param/" + k: np.asarray(v) for k, v in full.items()},
                 loss=np.asarray(last["loss"]), step=np.asarray(int(tr.state.step)),
                 ckpt_steps=np.asarray(restored, np.int64), processes=np.asarray(jax.process_count()))
    if mode == "multi":
        multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
