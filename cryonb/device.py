"""Which device a step runs on (the spec's ``device`` entry, resolved once) and how many CPU threads it uses.

Threads on a shared CPU: torch's CPU kernels, MKL and oneDNN run on GNU OpenMP (``libgomp``, bundled with
torch). One training step runs thousands of small parallel regions, each ending at a barrier where every thread
waits for the slowest. By default libgomp's idle threads also *spin* (busy-wait) before sleeping. Beside any
other runnable process on a 2-core machine, one of the two threads is often descheduled, and every barrier
waits a scheduler slice for it while its partner spins. Measured (``benchmarks/bench_shared_cpu.py``, RB3D width 8,
batch 16, seconds per step alone and the slowdown beside one competing busy process, low priority / normal; load
average 1.0–2.1 from other users)::

    2 threads, default wait (torch as it comes)    0.188 s   1.15×   3.63×
    2 threads, OMP_WAIT_POLICY=PASSIVE             0.284 s   1.52×   2.67×
    1 thread, passive (cryonb)                     0.344 s   1.01×   1.08×
    2 models × 1 thread (fit_many), per model      0.149 s   1.04×   1.64×

With more of other users' load (1.9–3.5), 2 threads took 0.9–8.4 s per step and one thread 0.35–0.40 s.

So cryonb runs **one intra-op thread per process** and gets parallelism from independent models instead
(:func:`cryonb.train.fit_many`: one model per core, no barriers between them), with idle threads sleeping
(``OMP_WAIT_POLICY=PASSIVE``) for anyone who raises the count. Both are read by OpenMP once, when torch is
imported, so they are set in :mod:`cryonb`'s ``__init__`` (``os.environ.setdefault``: an explicit
``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` wins; ``CRYONB_NUM_THREADS`` sets the count) before anything imports
torch. ``python -m cryonb run`` imports cryonb first, so every notebook kernel it starts inherits them; the
Makefile exports the wait policy; :func:`configure_threads` (called by :func:`cryonb.nb.start`) applies the
count also where torch was imported before cryonb. (``KMP_BLOCKTIME`` is the Intel/LLVM OpenMP knob; this
torch's libgomp does not read it.) NOTE: results depend on the thread count (reductions split differently),
never on the machine's load: a fixed count keeps runs bit-identical.
"""

from __future__ import annotations

import os
import warnings

import torch

from cryonb.errors import CryoNBError

__all__ = ["pick_device", "configure_threads", "default_threads", "WAIT_POLICY", "THREADS_ENV", "wait_policy_applied"]

#: the OpenMP wait policy cryonb sets before torch loads
WAIT_POLICY = "PASSIVE"
#: environment variable that sets torch's intra-op CPU threads for cryonb (unset: 1)
THREADS_ENV = "CRYONB_NUM_THREADS"
_warned = False


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def wait_policy_applied() -> bool:
    """Whether this process's OpenMP threads sleep when idle: a wait policy was in the environment when torch loaded."""
    import cryonb

    return cryonb._WAIT_POLICY_BEFORE_TORCH is not None


def default_threads() -> int:
    """The configured intra-op thread count: ``$CRYONB_NUM_THREADS``, else ``$OMP_NUM_THREADS``, else 1."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = os.environ.get(name)
        if raw:
            try:
                n = int(raw)
            except ValueError:
                n = 0
            if n < 1:
                raise CryoNBError(f"CPU threads {name}={raw!r}: expected an integer ≥ 1")
            return n
    return 1


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads for this process (default :func:`default_threads`); returns the count.

    Warns once when more than one thread runs without the passive wait policy (torch imported before cryonb
    and no ``OMP_WAIT_POLICY`` in the environment).
    """
    global _warned
    if num_threads is not None and int(num_threads) < 1:
        raise CryoNBError(f"CPU threads num_threads={num_threads}: expected an integer ≥ 1")
    n = int(num_threads) if num_threads is not None else default_threads()
    torch.set_num_threads(n)
    if n > 1 and not wait_policy_applied() and not _warned:
        _warned = True
        warnings.warn(f"torch was imported before cryonb without OMP_WAIT_POLICY: its {n} CPU threads spin after every operation, "
                      f"which can cost several times the run time beside other CPU-bound processes; import cryonb first or "
                      f"export OMP_WAIT_POLICY={WAIT_POLICY}", RuntimeWarning, stacklevel=2)
    return n
