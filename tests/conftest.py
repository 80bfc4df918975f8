"""Shared test set-up: non-interactive plotting, and one torch thread for modules of tiny networks."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cryonb sets it, before torch loads (cryonb.device)

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def one_torch_thread():  # noqa: ANN201
    """Tiny networks: thread start-up and OpenMP hand-offs cost more than they save (20–100× slower on a
    busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# No test reaches the internet: code that would probe the CryoET Data Portal (notebook 09) stays offline.
os.environ["CRYONB_OFFLINE"] = "1"
