"""User errors: what the person running vkd_jax can fix, as opposed to bugs.

A user error is something wrong with what a run was handed or has to work with: a config field, a config file or
a command-line flag; a benchmark file, row or image; a weights folder (an HF LLaVA folder, a vkd_jax checkpoint)
or its tokenizer and processor files; a checkpoint damaged on disk, or one that cannot be written (a full disk); a
run that cannot fit its devices. The user fixes it by changing that input, and the message says where: it names
the file, key or config field at fault. The command lines (vkd_jax.cli) print a user error as one `error: ...`
line and exit 1; any other exception is a bug in vkd_jax and keeps its traceback. A check that only our own code
can fail (an internal invariant, a wrong argument from a caller in vkd_jax, a config value that
vkd_jax.config_check has already validated) raises ValueError / TypeError / an assertion instead.

`UserError` subclasses ValueError, so code and tests that catch ValueError keep working. The three kinds of input
every layer reads are declared here (this module imports nothing from vkd_jax, so that any module can raise them);
an error about one module's own work is declared beside it: SafetensorsError (models.safetensors_io),
DamagedCheckpointError (digests), ShippedModelError (shipped), PartitionError (unlearn.partition),
CheckpointWriteError (unlearn.checkpoint), PreflightError (preflight), OutputExistsError (io_utils).
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix in a config, a flag, a data file or a weights folder; the message names it."""


class ConfigError(UserError):
    """A config field, config file or command-line flag that cannot work (and a model's config.json that cannot
    describe a LLaVA-1.5-style model); the message names the field or file."""


class DataError(UserError):
    """A malformed benchmark file or row, or an input image or image folder that cannot be used; the message names
    the file, row and column (`file` None: the message names what is at fault itself)."""

    def __init__(self, file: str | None, row: int | None, column: str | None, msg: str):
        self.file, self.row, self.column = file, row, column
        where = (f"{file}: " if file is not None else "") + (f"row {row}, " if row is not None else "") + \
            (f"column '{column}': " if column is not None else "")
        super().__init__(where + msg)


class CheckpointError(UserError):
    """A model folder (an HF LLaVA folder or a vkd_jax params checkpoint) that cannot be loaded: weights that do not
    match the model (the message lists every problem at once), or a missing or unreadable file of it (tokenizer,
    processor config, model_config.json)."""
