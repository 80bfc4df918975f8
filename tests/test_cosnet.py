"""COS-Net: shapes, DuSE behaviour, variants, parameter counts, loss and input errors."""

import pytest
import torch

from cryonb import CryoNBError
from cryonb.models.cosnet import VARIANTS, COSNet, COSNetConfig, DuSE, count_parameters, dice_loss


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_shapes(variant: str) -> None:
    torch.manual_seed(0)
    net = COSNet(COSNetConfig.from_variant(variant, base_channels=4, feature_dim=32)).eval()
    emb, mask = net(torch.randn(3, 1, 32, 32, 32))
    assert emb.shape == (3, 32)
    if VARIANTS[variant]["decoder"]:
        assert mask is not None and mask.shape == (3, 1, 32, 32, 32)
        assert 0.0 <= mask.min().item() and mask.max().item() <= 1.0
    else:
        assert mask is None
    assert net.score(emb[:2], emb).shape == (3, 2)


def test_parameter_counts_order_and_duse_size() -> None:
    counts = {v: count_parameters(COSNet(COSNetConfig.from_variant(v, base_channels=8))) for v in VARIANTS}
    assert counts["SCNN"] < counts["DuSE-SCNN"] < counts["DuSE-SCNN+decoder"]
    assert counts["SCNN"] < counts["SCNN+decoder"] < counts["DuSE-SCNN+decoder"]
    # one DuSE of C channels, reduction 2: C·C/2 + C/2 + C/2·C + C + C + 1
    c = 8
    assert count_parameters(DuSE(c, 2)) == c * (c // 2) + c // 2 + (c // 2) * c + c + c + 1
    # encoder has three DuSE blocks (C, 2C, 4C), and nothing else differs between SCNN and DuSE-SCNN
    duse = sum(count_parameters(DuSE(k, 2)) for k in (c, 2 * c, 4 * c))
    assert counts["DuSE-SCNN"] - counts["SCNN"] == duse


def test_duse_add_and_max_combine() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 5, 5)
    add, mx = DuSE(4, combine="add"), DuSE(4, combine="max")
    mx.load_state_dict(add.state_dict())
    v = x.mean(dim=(2, 3, 4))
    cg = torch.sigmoid(add.fc2(torch.relu(add.fc1(v))))[:, :, None, None, None]
    sg = torch.sigmoid(add.spatial(x))
    assert torch.allclose(add(x), x * cg + x * sg, atol=1e-6)
    assert torch.allclose(mx(x), torch.maximum(x * cg, x * sg), atol=1e-6)


def test_siamese_score_is_symmetric_and_shared() -> None:
    net = COSNet(COSNetConfig(base_channels=4, feature_dim=16)).eval()
    a, b = torch.randn(2, 16), torch.randn(3, 16)
    assert torch.allclose(net.score(a, b), net.score(b, a).t(), atol=1e-6)


def test_dice_loss_values_and_mask_shape_error() -> None:
    g = torch.zeros(1, 1, 4, 4, 4)
    g[..., :2] = 1
    assert dice_loss(g.clone(), g, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1 - g, g, eps=0.0).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(CryoNBError, match="mask has shape"):
        dice_loss(g, torch.zeros(1, 4, 4, 5))


def test_bad_inputs() -> None:
    net = COSNet(COSNetConfig(base_channels=2, feature_dim=8))
    with pytest.raises(CryoNBError, match="input has shape"):
        net(torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(CryoNBError, match="unknown COS-Net variant"):
        COSNetConfig.from_variant("ResNet")
    with pytest.raises(CryoNBError, match="combine"):
        COSNetConfig(combine="mul")  # type: ignore[arg-type]


def test_monotone_match_head_never_rewards_distance() -> None:
    torch.manual_seed(2)
    net = COSNet(COSNetConfig(base_channels=2, feature_dim=8, match_head="monotone"))
    with torch.no_grad():
        net.match.weight.normal_(0, 3.0)  # mixed signs: the raw layer would reward some distances
    d = torch.rand(50, 8)
    grown = d + torch.rand(50, 8)  # every feature distance grows
    assert (net.match_logits(grown) <= net.match_logits(d) + 1e-6).all()
    linear = COSNet(COSNetConfig(base_channels=2, feature_dim=8))
    linear.match.load_state_dict(net.match.state_dict())
    assert (linear.match_logits(grown) > linear.match_logits(d)).any()
