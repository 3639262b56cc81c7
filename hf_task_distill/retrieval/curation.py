"""From neighbour lists to a transfer set: per-query top-k, union without duplicates, leakage guard."""

from __future__ import annotations

import numpy as np

from .search import exact_search

__all__ = ["leakage_mask", "union_of_neighbours"]


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
