"""Episode sampling: class membership, no query reuse, determinism, clear errors."""

import numpy as np
import pytest

from cryonb import CryoNBError
from cryonb.episodes import Episode, episodes_to_arrays, sample_episodes, sample_training_pair

LABELS = np.repeat(np.arange(8), 5)  # 8 classes × 5 examples
UNSEEN = np.flatnonzero(LABELS >= 5)  # classes 5, 6, 7


@pytest.mark.parametrize("n_way,k_shot", [(2, 1), (3, 1), (3, 3)])
def test_episodes_use_only_the_pool_and_never_reuse_the_query(n_way: int, k_shot: int) -> None:
    eps = sample_episodes(LABELS, UNSEEN, n_way, k_shot, 300, seed=1)
    for e in eps:
        assert e.support.shape == (n_way, k_shot)
        assert set(e.classes.tolist()) <= {5, 6, 7}
        assert e.query not in e.support
        assert LABELS[e.query] == e.classes[e.label]
        assert all((LABELS[e.support[i]] == e.classes[i]).all() for i in range(n_way))
    labels = np.array([e.label for e in eps])
    # the query's position is shuffled: every slot is used
    assert set(labels.tolist()) == set(range(n_way))


def test_same_seed_same_episodes_other_seed_differs() -> None:
    a = episodes_to_arrays(sample_episodes(LABELS, UNSEEN, 2, 1, 50, seed=7))
    b = episodes_to_arrays(sample_episodes(LABELS, UNSEEN, 2, 1, 50, seed=7))
    c = episodes_to_arrays(sample_episodes(LABELS, UNSEEN, 2, 1, 50, seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_n_way_larger_than_unseen_classes_is_an_error() -> None:
    with pytest.raises(CryoNBError, match="n_way=4 is larger than the 3 unseen classes"):
        sample_episodes(LABELS, UNSEEN, 4, 1, 1, seed=0, what="unseen")


def test_repeated_class_and_query_in_support_are_errors() -> None:
    with pytest.raises(CryoNBError, match="repeated class"):
        Episode(classes=np.array([5, 5]), support=np.array([[25], [26]]), query=27, label=0)
    with pytest.raises(CryoNBError, match="never reuses the query"):
        Episode(classes=np.array([5, 6]), support=np.array([[25], [30]]), query=25, label=0)


def test_training_pair_matches_classes_with_distinct_examples() -> None:
    rng = np.random.default_rng(0)
    seen = np.flatnonzero(LABELS < 5)
    classes, a, b = sample_training_pair(LABELS, seen, 4, rng)
    assert len(set(classes.tolist())) == 4 and set(classes.tolist()) <= set(range(5))
    assert np.array_equal(LABELS[a], classes) and np.array_equal(LABELS[b], classes)
    assert not np.any(a == b)
