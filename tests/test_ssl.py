"""Contrastive losses against naive formulas; queue handling; Sinkhorn equipartition; collapse signal."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.pretrain import embedding_std, knn_accuracy
from cryonb.ssl import MoCo, info_nce, nt_xent, sinkhorn, swav_loss

torch.manual_seed(0)


def test_info_nce_matches_naive_formula() -> None:
    q, k, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    tau = 0.2
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    naive = []
    for j in range(3):
        pos = math.exp(float(qn[j] @ kn[j]) / tau)
        neg = sum(math.exp(float(qn[j] @ un[i]) / tau) for i in range(5))
        naive.append(-math.log(pos / (pos + neg)))
    assert float(info_nce(q, k, queue, tau)) == pytest_approx(np.mean(naive))


def pytest_approx(x: float):  # noqa: ANN201
    import pytest

    return pytest.approx(x, rel=1e-5)


def test_info_nce_mask_removes_negatives() -> None:
    q, k, queue = torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    naive = []
    for j in range(2):
        pos = math.exp(float(qn[j] @ kn[j]) / 0.5)
        neg = sum(math.exp(float(qn[j] @ un[i]) / 0.5) for i in range(3) if not mask[j, i])
        naive.append(-math.log(pos / (pos + neg)))
    assert float(info_nce(q, k, queue, 0.5, mask)) == pytest_approx(np.mean(naive))


def test_nt_xent_matches_naive_formula() -> None:
    z1, z2, tau = torch.randn(3, 5), torch.randn(3, 5), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = 3
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[m]) / tau) for m in range(2 * n) if m != i)
        losses.append(-math.log(num / den))
    assert float(nt_xent(z1, z2, tau)) == pytest_approx(np.mean(losses))


def test_sinkhorn_equipartitions() -> None:
    # SwAV's scores are cosines of normalised features and prototypes, in [-1, 1]
    scores = F.normalize(torch.randn(64, 16), dim=1) @ F.normalize(torch.randn(8, 16), dim=1).T
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(codes.sum(1), torch.ones(64), atol=1e-4)  # each sample: a distribution
    greedy = F.softmax(scores / 0.05, dim=1).sum(0) / 64  # no balancing
    gap_3 = (codes.sum(0) / 64 - 1 / 8).abs().max()
    assert gap_3 < (greedy - 1 / 8).abs().max()  # 3 iterations already balance better than none
    converged = sinkhorn(scores, epsilon=0.05, iterations=50)
    assert (converged.sum(0) / 64 - 1 / 8).abs().max() < 1e-3  # every prototype gets 1/K of the mass


def test_swav_loss_matches_swapped_cross_entropy() -> None:
    s1, s2 = torch.randn(6, 4), torch.randn(6, 4)
    q1, q2 = sinkhorn(s1), sinkhorn(s2)
    p1, p2 = F.softmax(s1 / 0.1, 1), F.softmax(s2 / 0.1, 1)
    naive = -0.5 * float((q1 * p2.log()).sum(1).mean() + (q2 * p1.log()).sum(1).mean())
    assert float(swav_loss(s1, s2, 0.1)) == pytest_approx(naive)


def _tiny_moco(queue: int) -> MoCo:
    return MoCo(RB3D(RB3DConfig(width=4, embedding_dim=8, n_classes=2)), dim=4, queue_size=queue, momentum=0.9)


def test_moco_queue_wraps_when_k_not_multiple_of_batch() -> None:
    moco = _tiny_moco(queue=5)
    x = torch.randn(3, 1, 8, 8, 8)
    for step in range(3):
        moco.loss(x, x, torch.tensor([10 * step, 10 * step + 1, 10 * step + 2]))
        moco.after_step()
    assert int(moco.queue_ptr) == (3 * 3) % 5
    assert sorted(moco.queue_ids.tolist()) == sorted([21, 22, 10, 11, 12][:5]) or set(moco.queue_ids.tolist()) == {20, 21, 22, 11, 12}


def test_moco_masks_keys_of_the_same_sample() -> None:
    moco = _tiny_moco(queue=4)
    x = torch.randn(2, 1, 8, 8, 8)
    moco.loss(x, x, torch.tensor([0, 1]))
    moco.after_step()  # queue slots: [id 0, id 1, empty, empty]
    moco.eval()  # no dropout: the same input gives the same loss
    with torch.no_grad():
        base = float(moco.loss(x[:1], x[:1], torch.tensor([0])))
        moco.queue[0] = torch.randn(4)  # sample 0's own old key: masked, must not matter
        moco.queue[2:] = torch.randn(2, 4)  # empty slots: masked, must not matter
        same = float(moco.loss(x[:1], x[:1], torch.tensor([0])))
        moco.queue[1] = -moco.queue[1]  # another sample's key: a real negative, must matter
        changed = float(moco.loss(x[:1], x[:1], torch.tensor([0])))
    assert same == pytest_approx(base)
    assert abs(changed - base) > 1e-4


def test_momentum_update_moves_key_encoder_towards_query() -> None:
    moco = _tiny_moco(queue=4)
    with torch.no_grad():
        for p in moco.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.after_step()
    for b, k, q in zip(before, moco.key_encoder.parameters(), moco.encoder.parameters()):
        assert torch.allclose(k, 0.9 * b + 0.1 * q)


def test_knn_and_collapse_signals() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    labels = np.repeat(np.arange(3), 20)
    emb = centres[labels] + rng.normal(size=(60, 16))
    assert knn_accuracy(emb[::2], labels[::2], emb[1::2], labels[1::2]) > 0.95
    assert embedding_std(emb) > 0.1
    assert embedding_std(np.ones((60, 16)) + 1e-6 * rng.normal(size=(60, 16))) < 1e-3


def test_knn_sees_past_a_common_offset() -> None:
    """Pooled features share a large offset; per-dimension z-scoring must let the k-NN see the class signal."""
    from cryonb.pretrain import standardise

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 8))
    emb = 1000.0 + 0.01 * centres[labels] + 0.001 * rng.normal(size=(120, 8))
    assert knn_accuracy(emb[::2], labels[::2], emb[1::2], labels[1::2]) > 0.95
    train_z, test_z = standardise(emb[::2], emb[1::2])
    np.testing.assert_allclose(train_z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(train_z.std(0), 1, atol=1e-6)
    assert abs(test_z.mean()) < 0.5
