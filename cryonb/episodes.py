"""n-way k-shot episodes over a labelled pool of subtomograms.

An episode holds a support set (n classes × k examples) and one query of one of those classes;
indices refer to rows of the data set. Training episodes come from the seen classes, test episodes
from the unseen classes only (the caller passes the matching pool of indices). Sampling uses one
``numpy.random.Generator``; the same seed gives the same episodes on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryonb.errors import CryoNBError

__all__ = ["Episode", "sample_episode", "sample_episodes", "sample_training_pair", "episodes_to_arrays"]


@dataclass(frozen=True)
class Episode:
    """One n-way k-shot episode.

    Attributes
    ----------
    classes : (n,) int class ids, all different.
    support : (n, k) int data-set indices; row i holds examples of ``classes[i]``.
    query : int data-set index of the target subtomogram (never one of ``support``).
    label : int position in ``classes`` of the query's class.
    """

    classes: np.ndarray
    support: np.ndarray
    query: int
    label: int

    def __post_init__(self) -> None:
        classes = np.asarray(self.classes)
        support = np.asarray(self.support)
        if len(np.unique(classes)) != len(classes):
            raise CryoNBError(f"support set has a repeated class: classes={classes.tolist()}; expected n different classes")
        if support.ndim != 2 or support.shape[0] != len(classes):
            raise CryoNBError(f"support has shape {support.shape}: expected (n_way={len(classes)}, k_shot)")
        if len(np.unique(support)) != support.size:
            raise CryoNBError(f"support set reuses a subtomogram: {support.tolist()}")
        if int(self.query) in set(support.ravel().tolist()):
            raise CryoNBError(f"query {self.query} is also in the support set; an episode never reuses the query")
        if not 0 <= self.label < len(classes):
            raise CryoNBError(f"label {self.label}: expected 0…{len(classes) - 1}")

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def k_shot(self) -> int:
        return int(np.asarray(self.support).shape[1])


def _by_class(labels: np.ndarray, pool: np.ndarray) -> dict[int, np.ndarray]:
    pool = np.asarray(pool, dtype=np.int64)
    lab = np.asarray(labels)[pool]
    return {int(c): pool[lab == c] for c in np.unique(lab)}


def _check_sizes(groups: dict[int, np.ndarray], n_way: int, per_class: int, what: str) -> list[int]:
    if n_way < 2:
        raise CryoNBError(f"n_way={n_way}: expected ≥ 2")
    eligible = [c for c, idx in groups.items() if len(idx) >= per_class]
    if n_way > len(eligible):
        raise CryoNBError(
            f"n_way={n_way} is larger than the {len(eligible)} {what} classes with ≥ {per_class} examples "
            f"(classes in the pool: {sorted(groups)})"
        )
    return eligible


def sample_episode(labels: np.ndarray, pool: np.ndarray, n_way: int, k_shot: int, rng: np.random.Generator, what: str = "pool") -> Episode:
    """Draw one episode from ``pool``.

    Parameters
    ----------
    labels : (N,) class id of every data-set row.
    pool : (M,) indices allowed in this episode (e.g. the unseen classes).
    n_way, k_shot : classes and examples per class of the support set.
    rng : the generator to draw from.
    """
    if k_shot < 1:
        raise CryoNBError(f"k_shot={k_shot}: expected ≥ 1")
    groups = _by_class(labels, pool)
    eligible = _check_sizes(groups, n_way, k_shot, what)
    # the query's class needs k_shot + 1 examples so that the query is not in its own support
    query_ok = [c for c in eligible if len(groups[c]) >= k_shot + 1]
    if not query_ok:
        raise CryoNBError(f"no {what} class has k_shot + 1 = {k_shot + 1} examples for a query")
    query_class = int(rng.choice(query_ok))
    others = [c for c in eligible if c != query_class]
    classes = np.array([query_class, *rng.choice(others, size=n_way - 1, replace=False).tolist()], dtype=np.int64)
    classes = classes[rng.permutation(n_way)]
    label = int(np.flatnonzero(classes == query_class)[0])
    picks = rng.choice(groups[query_class], size=k_shot + 1, replace=False)
    query = int(picks[0])
    support = np.stack([picks[1:] if c == query_class else rng.choice(groups[int(c)], size=k_shot, replace=False) for c in classes])
    return Episode(classes=classes, support=support.astype(np.int64), query=query, label=label)


def sample_episodes(labels: np.ndarray, pool: np.ndarray, n_way: int, k_shot: int, n_episodes: int, seed: int, what: str = "pool") -> list[Episode]:
    """``n_episodes`` episodes from one ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [sample_episode(labels, pool, n_way, k_shot, rng, what) for _ in range(n_episodes)]


def sample_training_pair(labels: np.ndarray, pool: np.ndarray, n_way: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's training episode: two 1-shot support sets over the same n random classes.

    Returns
    -------
    classes : (n,) class ids; set_a, set_b : (n,) data-set indices, row i of class ``classes[i]``,
    with set_a[i] ≠ set_b[i]. The match label of pair (a_i, b_j) is ``i == j``.
    """
    groups = _by_class(labels, pool)
    eligible = _check_sizes(groups, n_way, 2, "training")
    classes = rng.choice(eligible, size=n_way, replace=False).astype(np.int64)
    pairs = np.stack([rng.choice(groups[int(c)], size=2, replace=False) for c in classes])
    return classes, pairs[:, 0], pairs[:, 1]


def episodes_to_arrays(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack episodes of one shape: classes (E, n), support (E, n, k), query (E,), label (E,)."""
    if not episodes:
        raise CryoNBError("no episodes to stack")
    shapes = {np.asarray(e.support).shape for e in episodes}
    if len(shapes) != 1:
        raise CryoNBError(f"episodes have different support shapes {sorted(shapes)}; expected one n_way × k_shot")
    return (
        np.stack([e.classes for e in episodes]),
        np.stack([e.support for e in episodes]),
        np.array([e.query for e in episodes], dtype=np.int64),
        np.array([e.label for e in episodes], dtype=np.int64),
    )
