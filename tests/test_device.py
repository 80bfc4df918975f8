"""CPU thread settings: the count comes from CRYONB_NUM_THREADS / OMP_NUM_THREADS (default 1), bad values are errors."""

import subprocess
import sys

import pytest
import torch

from cryonb import CryoNBError
from cryonb.device import configure_threads, default_threads


def test_thread_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("CRYONB_NUM_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert default_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert default_threads() == 3
        monkeypatch.setenv("CRYONB_NUM_THREADS", "2")  # cryonb's own setting wins
        assert configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("CRYONB_NUM_THREADS", "two")
        with pytest.raises(CryoNBError, match="CRYONB_NUM_THREADS='two': expected an integer ≥ 1"):
            default_threads()
        with pytest.raises(CryoNBError, match="num_threads=0"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_importing_cryonb_first_sets_one_passive_thread() -> None:
    code = "import cryonb, torch, os; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], cryonb._WAIT_POLICY_BEFORE_TORCH)"
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["1", "PASSIVE", "PASSIVE"]
    late = "import torch, cryonb, os; print(torch.get_num_threads() >= 1, os.environ['OMP_WAIT_POLICY'], cryonb._WAIT_POLICY_BEFORE_TORCH)"
    out = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["True", "PASSIVE", "None"]  # too late for this process's OpenMP; its children inherit it
