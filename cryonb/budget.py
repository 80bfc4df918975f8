"""Time budgets for long runs: stop at the next checkpoint, and let the same command continue.

The paper profile runs on rented GPUs whose commands are capped (e.g. 10 minutes each). ``python -m cryonb
run --max-minutes M`` (``make reproduce MAX_MINUTES=M``) sets a deadline in the environment, which the
notebook kernels inherit; every long loop calls :func:`check` right after it has saved its state (an
epoch of ``cryonb.train.fit``, a chunk of the simulator, a checkpoint of COS-Net training, a finished
fine-tuning run) and raises :class:`PartDone` once the deadline has passed. The runner reports the part as
done (exit code 3); running the same command again resumes from the saved state. Without a deadline
nothing changes.
"""

from __future__ import annotations

import os
import time

from cryonb.errors import CryoNBError

__all__ = ["DEADLINE_ENV", "PartDone", "set_deadline", "clear_deadline", "time_left", "check"]

#: Unix time after which long loops stop at their next saved state
DEADLINE_ENV = "CRYONB_DEADLINE"


class PartDone(CryoNBError):
    """The time budget is used up; progress is saved and the same command continues it."""


def set_deadline(seconds_from_now: float) -> float:
    """Set the deadline ``seconds_from_now`` ahead (for this process and its children); returns it."""
    if not seconds_from_now > 0:
        raise CryoNBError(f"time budget {seconds_from_now} s: expected > 0")
    deadline = time.time() + float(seconds_from_now)
    os.environ[DEADLINE_ENV] = repr(deadline)
    return deadline


def clear_deadline() -> None:
    os.environ.pop(DEADLINE_ENV, None)


def time_left() -> float | None:
    """Seconds until the deadline (negative once passed), or None when no budget is set."""
    raw = os.environ.get(DEADLINE_ENV)
    if not raw:
        return None
    try:
        return float(raw) - time.time()
    except ValueError as exc:
        raise CryoNBError(f"{DEADLINE_ENV}={raw!r}: expected a Unix time in seconds") from exc


def check(where: str) -> None:
    """Raise :class:`PartDone` if the deadline has passed; call only right after state was saved."""
    left = time_left()
    if left is not None and left <= 0:
        raise PartDone(f"time budget used up after {where}; progress is saved: run the same command again to continue")
