"""From neighbour lists to a transfer set: per-query top-k, union without duplicates, leakage guard,
and the budget's policy (how many neighbours to ask for, which rows a total budget keeps).

The policy functions are pure: arrays and numbers in, arrays and numbers out, no I/O and no state.
"""

from __future__ import annotations

import math

import numpy as np

from .search import exact_search

__all__ = ["budget_mask", "drop_leaked", "leakage_mask", "neighbours_per_query", "union_of_neighbours"]


def union_of_neighbours(
    scores: np.ndarray, ids: np.ndarray, *, min_similarity: float | None = None
) -> dict[str, np.ndarray]:
    """Each pool item once, credited to the query that ranked it best (highest score, then lowest rank).

    ``scores``/``ids`` are ``[queries, k]`` search results (``-1`` ids are padding). Returns columns
    ``pool_index``, ``query_index``, ``score``, ``rank`` sorted by ``pool_index``.
    """
    q, k = ids.shape
    pool_index = ids.reshape(-1)
    query_index = np.repeat(np.arange(q), k)
    rank = np.tile(np.arange(k), q)
    score = scores.reshape(-1)
    keep = pool_index >= 0
    if min_similarity is not None:
        keep &= score >= min_similarity
    pool_index, query_index, rank, score = pool_index[keep], query_index[keep], rank[keep], score[keep]
    order = np.lexsort((rank, -score, pool_index))  # by pool item, best score first
    pool_index, query_index, rank, score = pool_index[order], query_index[order], rank[order], score[order]
    first = np.ones(pool_index.size, dtype=bool)
    first[1:] = pool_index[1:] != pool_index[:-1]
    return {
        "pool_index": pool_index[first],
        "query_index": query_index[first],
        "score": score[first],
        "rank": rank[first],
    }


def leakage_mask(
    candidates: np.ndarray, heldout: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which candidate embeddings are near-duplicates (cosine >= ``threshold``) of a held-out image.

    Returns (mask, best similarity per candidate). Exact search: the held-out sets (validation, test)
    are small next to the pool, and a guard must not miss.
    """
    if heldout is None or len(heldout) == 0 or len(candidates) == 0:
        return np.zeros(len(candidates), dtype=bool), np.full(len(candidates), -1.0, dtype=np.float32)
    best = exact_search(heldout, candidates, 1)[0][:, 0]
    return best >= threshold, best


def drop_leaked(
    picked: dict[str, np.ndarray],
    pool_vectors: np.ndarray,
    heldout: np.ndarray,
    threshold: float,
    verdicts: dict[int, bool],
) -> tuple[dict[str, np.ndarray], int]:
    """``picked`` less its near-copies of a held-out image (:func:`leakage_mask`), judging only the rows
    not judged before: ``verdicts`` (guard verdicts by pool embedding row) is read and extended, so a
    search that widens ``k`` meets each pool image once.

    Args:
        picked (`dict[str, np.ndarray]`): columns of :func:`union_of_neighbours`; ``pool_index`` holds
            rows of ``pool_vectors``.
        pool_vectors (`np.ndarray` of shape `[pool, dim]`): L2-normalised pool embeddings.
        heldout (`np.ndarray` of shape `[heldout, dim]`): L2-normalised validation/test embeddings.
        threshold (`float`): cosine similarity in [-1, 1] at or above which a row is a copy.
        verdicts (`dict[int, bool]`): earlier verdicts, ``True`` for a copy; updated in place.

    Returns:
        `tuple[dict[str, np.ndarray], int]`: the columns without the copies, and how many were removed.
    """
    new = np.array([r for r in picked["pool_index"].tolist() if r not in verdicts], dtype=np.int64)
    if new.size:
        leaked_new, _ = leakage_mask(pool_vectors[new].astype(np.float32), heldout, threshold)
        verdicts.update(zip(new.tolist(), leaked_new.tolist(), strict=True))
    leaked = np.array([verdicts[r] for r in picked["pool_index"].tolist()], dtype=bool)
    return {name: column[~leaked] for name, column in picked.items()}, int(leaked.sum())


def neighbours_per_query(
    labels: np.ndarray | None, num_queries: int, *, per_query_k: int | None, transfer_budget: int | None
) -> int:
    """How many nearest pool images to ask of each query (``k``) before any widening.

    ``per_query_k`` when given (the paper's balanced scheme); otherwise the budget spread over the
    queries, or, with labels, over the classes: the smallest class's queries must reach its share, with
    2x headroom for neighbours that queries of one class share.

    Args:
        labels (`np.ndarray` of shape `[queries]`, *optional*): class ids (non-negative ints) of the
            queries, ``None`` when unlabelled.
        num_queries (`int`): queries that will search, >= 1.
        per_query_k (`int`, *optional*): neighbours per query, in images.
        transfer_budget (`int`, *optional*): total transfer-set size, in images; used when
            ``per_query_k`` is ``None``.

    Returns:
        `int`: ``k``, neighbours per query (not yet bounded by the pool's size).
    """
    if per_query_k is not None:
        return per_query_k
    if labels is None:
        return math.ceil(transfer_budget / num_queries)
    per_class = transfer_budget / len(np.unique(labels))
    smallest_class = np.bincount(labels)[np.unique(labels)].min()
    return math.ceil(per_class / smallest_class) * 2  # headroom for duplicates across queries


def budget_mask(scores: np.ndarray, groups: np.ndarray | None, transfer_budget: int | None) -> np.ndarray:
    """Which rows a total budget keeps: the best-scored ``transfer_budget // classes`` per class.

    A class whose rows number fewer than its share leaves the rest of its share to the other classes'
    best-scored leftovers, so the set holds ``transfer_budget`` images whenever there are that many:
    methods compared at one budget see as many images. Ties keep the earlier row.

    Args:
        scores (`np.ndarray` of shape `[rows]`): cosine similarity of each row to its query.
        groups (`np.ndarray` of shape `[rows]`, *optional*): the class of each row's query; ``None``
            puts every row in one class.
        transfer_budget (`int`, *optional*): images to keep; ``None`` keeps every row.

    Returns:
        `np.ndarray` of shape `[rows]`, bool: ``True`` for the rows kept.
    """
    keep = np.ones(len(scores), dtype=bool)
    if transfer_budget is None or keep.size <= transfer_budget:
        return keep
    if groups is None:
        groups = np.zeros(keep.size, dtype=int)
    classes = np.unique(groups)
    share = transfer_budget // len(classes)
    keep[:] = False
    for cls in classes:
        rows = np.flatnonzero(groups == cls)
        keep[rows[np.argsort(-scores[rows], kind="stable")[:share]]] = True
    leftovers = np.flatnonzero(~keep)
    shortfall = transfer_budget - int(keep.sum())
    keep[leftovers[np.argsort(-scores[leftovers], kind="stable")[:shortfall]]] = True
    return keep
