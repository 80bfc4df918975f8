"""Dense 3-D CRF: bilateral grid vs brute force, unary-only argmax, parameter selection on noisy data."""

import math

import pytest
import torch

from cryonb import CryoNBError
from cryonb.crf import CRFParams, _BilateralGrid, dense_crf, dense_crf_bruteforce, probs_to_unary, select_crf_params, sweep_crf_params
from cryonb.metrics import dice


def _noisy_sphere(n: int, noise_std: float, seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch,1,n,n,n) image = sphere + Gaussian noise, and the (batch,n,n,n) sphere mask."""
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    c = (n - 1) / 2
    mask = (((z - c) ** 2 + (y - c + 0.5) ** 2 + (x - c - 0.5) ** 2) < (n / 3.2) ** 2).float()
    mask = mask.expand(batch, n, n, n).contiguous()
    image = mask[:, None] + noise_std * torch.randn(batch, 1, n, n, n, generator=g)
    return image, mask


def test_bilateral_grid_approximates_exact_filter() -> None:
    image, _ = _noisy_sphere(12, 0.5, 0)
    grid = _BilateralGrid(image[0, 0], 2.0, 0.5, 1.5)
    q = torch.rand(12**3, 2, generator=torch.Generator().manual_seed(1))
    zyx = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inten = image.reshape(-1, 1)
    k = torch.exp(-torch.cdist(zyx, zyx) ** 2 / 8.0 - (inten - inten.t()) ** 2 / 0.5)
    rel = ((grid(q) - k @ q).norm() / (k @ q).norm()).item()
    assert rel < 0.05


@pytest.mark.parametrize(
    "params",
    [
        CRFParams(),
        CRFParams(w_bilateral=0.03, w_spatial=0.2, sigma_pos_vox=2.0, sigma_int=0.5),
        CRFParams(w_bilateral=0.05, w_spatial=0.0, sigma_pos_vox=3.0, sigma_int=1.0, n_iter=8),
    ],
)
def test_mean_field_agrees_with_bruteforce(params: CRFParams) -> None:
    image, _ = _noisy_sphere(12, 0.6, 2, batch=2)
    unary = probs_to_unary(torch.sigmoid(2.5 * (image - 0.5)))
    fast = dense_crf(unary, image, params).argmax(1)
    exact = dense_crf_bruteforce(unary, image, params).argmax(1)
    changed = (exact != unary.argmin(1)).float().mean().item()
    assert changed > 0.02  # the CRF actually does something here, so agreement is informative
    assert (fast == exact).float().mean().item() >= 0.99


def test_unary_only_returns_argmax() -> None:
    probs = torch.rand(2, 3, 6, 7, 8, generator=torch.Generator().manual_seed(3))
    probs = probs / probs.sum(1, keepdim=True)
    image = torch.randn(2, 1, 6, 7, 8)
    q = dense_crf(probs_to_unary(probs), image, CRFParams(w_bilateral=0.0, w_spatial=0.0))
    assert torch.equal(q.argmax(1), probs.argmax(1))


def test_binary_probability_expands_to_two_labels() -> None:
    p = torch.full((1, 1, 2, 2, 2), 0.8)
    u = probs_to_unary(p)
    assert u.shape == (1, 2, 2, 2, 2)
    assert math.isclose(u[0, 1, 0, 0, 0].item(), -math.log(0.8), rel_tol=1e-5)


def test_bad_shapes_and_params_are_rejected() -> None:
    with pytest.raises(CryoNBError, match="image has shape"):
        dense_crf(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(CryoNBError, match="sigma_int"):
        CRFParams(sigma_int=0.0)
    with pytest.raises(CryoNBError, match="unknown CRF parameter"):
        CRFParams.from_dict({"w1": 1.0})


def test_dice_values() -> None:
    a = torch.tensor([[1, 1, 0, 0]])
    b = torch.tensor([[1, 0, 0, 0]])
    assert math.isclose(dice(a, b).item(), 2 / 3, rel_tol=1e-4)


def test_selection_rejects_parameters_that_wipe_the_mask_at_snr_half() -> None:
    # SNR 0.5 = signal variance / noise variance; the sphere's variance is p(1-p)
    image, mask = _noisy_sphere(16, 0.0, 4, batch=2)
    p = mask.mean().item()
    image, _ = _noisy_sphere(16, math.sqrt(p * (1 - p) / 0.5), 4, batch=2)
    # a weak network: right on average, noisy voxel-wise
    probs = torch.sigmoid(1.5 * (2 * mask[:, None] - 1) + 1.2 * torch.randn(mask[:, None].shape, generator=torch.Generator().manual_seed(5)))
    wiping = CRFParams(w_bilateral=0.0, w_spatial=5.0, sigma_smooth_vox=4.0)  # smoothness so strong that background wins
    sensible = CRFParams(w_bilateral=0.003, w_spatial=0.15, sigma_smooth_vox=1.0)
    rows = sweep_crf_params(probs, image, mask, [wiping, sensible])
    assert rows[0]["rejected"] and rows[0]["min_kept"] < 0.2
    assert not rows[1]["rejected"]
    chosen = select_crf_params(rows)
    assert chosen == sensible
    before = dice((probs[:, 0] > 0.5).float(), mask).mean().item()
    assert rows[1]["dice"] > before  # the chosen CRF improves on the thresholded network output
    with pytest.raises(CryoNBError, match="wiped the mask"):
        select_crf_params(rows[:1])


def test_last_label_message_from_the_filtered_ones_equals_filtering_it() -> None:
    from cryonb.crf import _BilateralGrid, _complete

    torch.manual_seed(0)
    image = torch.randn(8, 8, 8)
    q = torch.softmax(torch.randn(8 * 8 * 8, 3), dim=1)  # rows sum to one, as mean-field marginals do
    grid = _BilateralGrid(image, sigma_pos=2.0, sigma_int=1.0, oversample=1.0)
    direct = grid(q)
    completed = _complete(grid(q[:, :-1]), grid(torch.ones(len(q), 1)))
    assert torch.allclose(direct, completed, atol=1e-4)
