"""Entry point: `python -m vkd_jax.main --config configs/tiny.py --workdir W [--config.method=ga ...]`.

Runs the whole pipeline (vkd_jax.experiment): the benchmark (generated for the embedded world, or a local
MLLMU-Bench download), the tokenizer, the vanilla model (pretraining on the celebrities and the fine-tune on all
profiles for the tiny model; real LLaVA weights from `config.hf_dir`), the reference model when the method needs
one, saliency masks, unlearning, evaluation of the vanilla and unlearned models, the relearning attack; then
W/results.json, W/report.md and W/plots/*.png (and W/hf_export with `--config.export_hf=True`). A rerun reuses the
finished stages; a killed stage resumes from its checkpoint. SIGTERM saves the training step in flight and exits
143 with one line saying how to resume (vkd_jax.preemption).

`--workdir` may be a gs:// URI (process 0 writes logs, reports, exports there; orbax writes checkpoints from all
processes); the benchmark is then built in a local cache on each host (`--local_cache`, see vkd_jax.experiment).

Multi-host: `--coordinator_address/--num_processes/--process_id`, or the SLURM / TPU-pod environment, make this
process join a jax.distributed run; a single-process run never initialises it.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, exports, reports); local or gs://")
_CACHE = flags.DEFINE_string("local_cache", None, "local folder for the benchmark when --workdir is a URI "
                             "(default $VKD_JAX_CACHE or ~/.cache/vkd_jax)")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from vkd_jax import distributed
    from vkd_jax.cli import guarded, user_errors

    with user_errors():  # inconsistent --coordinator_address/--num_processes/--process_id: one line
        spec = distributed.detect(_COORD.value, _NPROC.value, _PID.value)
    distributed.initialize(spec)  # before `guarded`, whose SIGTERM handler is for one-process runs only
    # orbax logs every checkpoint step at INFO; keep the console for the progress bars
    logging.set_verbosity(logging.WARNING)
    import jax

    from vkd_jax import experiment
    from vkd_jax.config_base import config_from_flag
    from vkd_jax.io_utils import resolve

    workdir = resolve(_WORKDIR.value)
    # bad config / data / weights (vkd_jax.errors.UserError): one clear line, exit 1; a bug: its traceback;
    # SIGTERM: saved, exit 143
    with guarded([sys.executable, "-m", "vkd_jax.main", *sys.argv[1:]]):
        results = experiment.run(config_from_flag(flags.FLAGS["config"]), workdir, local_cache=_CACHE.value)
    if jax.process_index() == 0:
        from vkd_jax.report import console_summary

        print(console_summary(results))
        print(f"report: {os.path.join(workdir, 'report.md')}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
