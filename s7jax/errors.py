"""The ways a run can end early, each with its exit code; every message is
one line that says what went wrong and what to do."""

from __future__ import annotations

import signal


class RunError(Exception):
    exit_code = 1


class BadInput(RunError):
    """Input the user can correct: exit code 2."""

    exit_code = 2


class ConfigError(BadInput, ValueError):
    """An invalid setting or flag."""


class DataError(BadInput):
    """Missing, corrupt or unusable input data."""


class CheckpointError(BadInput):
    """A checkpoint that cannot be read, or does not fit the run's config."""


class WriteError(BadInput):
    """A run's file could not be written (a full disk, a file in the way)."""


class NonFiniteLossError(RunError):
    """The loss became NaN or infinite; nothing of that epoch is saved."""

    exit_code = 3

    def __init__(self, epoch: int, step: int, kept: int | None = None):
        what = ("no checkpoint was saved before it" if kept is None
                else f"the last good checkpoint, step {kept}, is kept")
        super().__init__(f"non-finite loss in epoch {epoch} at step {step}; {what}")
        self.epoch, self.step, self.kept = epoch, step, kept


class Interrupted(RunError):
    """Ctrl-C or SIGTERM, a checkpoint saved: exit 128 + the signal, as the shell says."""

    def __init__(self, step: int, workdir, how: str | None = None, signum: int = 2):
        what = "terminated (SIGTERM)" if signum == 15 else "interrupted"
        super().__init__(f"{what} at step {step}; checkpoint saved, "
                         + (how or f"continue with --resume {workdir}"))
        self.step, self.exit_code = step, 128 + signum


class Terminated(BaseException):
    """SIGTERM, cleaned up after as Ctrl-C is: no ``except Exception`` takes it."""

    exit_code = 143


# Set by the commands' handler: the exception it raises inside a gc callback or
# a __del__ (JAX runs one at nearly every collection) Python only reports.
SIGNALLED = {"set": False, "signum": signal.SIGINT}


def raise_for_signal(signum, frame):
    SIGNALLED.update(set=True, signum=signum)  # the training loop's flag starts from it
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
