"""faiss index building, search, and recall measured against exact search."""

from __future__ import annotations

import numpy as np

from .index_choice import (
    OPTIMISTIC_PROBE_FRACTION,
    POINTS_PER_CENTROID,
    IndexPlan,
    choose_index,
    default_nlist,
    estimate,
)

__all__ = [
    "build_index",
    "check_embeddings",
    "exact_search",
    "pilot_probe_fraction",
    "plan_index",
    "recall_at_k",
    "search",
    "tune_nprobe",
]


def check_embeddings(vectors: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """float32, 2-D, finite, of the expected dimension; errors name the problem and the first bad row."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, d] array, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(
            f"{name} have dimension {vectors.shape[1]} but the pool has {dim}: embed both with the same model"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} hold {bad.size} row(s) with NaN/inf values (first: row {bad[0]})")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(pool: np.ndarray, plan: IndexPlan, *, use_gpu: bool = False, seed: int = 0):
    """Train and fill the index ``plan`` describes, for inner-product search on normalised vectors."""
    import faiss

    index = faiss.index_factory(pool.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index) if plan.nlist else None
        if ivf is not None:
            ivf.cp.seed = seed
            ivf.cp.max_points_per_centroid = POINTS_PER_CENTROID
        index.train(pool)
    index.add(pool)
    if plan.nprobe:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", plan.nprobe)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def exact_search(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(np.ascontiguousarray(pool, dtype=np.float32))
    return search(index, queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k neighbours that the approximate search also returned."""
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def tune_nprobe(
    index, pool: np.ndarray, sample_queries: np.ndarray, k: int, target_recall: float
) -> tuple[int, float]:
    """Smallest power-of-two ``nprobe`` whose recall@k on ``sample_queries`` reaches the target."""
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    truth = exact_search(pool, sample_queries, k)[1]
    nprobe, recall = 1, 0.0
    while True:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        recall = recall_at_k(search(index, sample_queries, k)[1], truth)
        if recall >= target_recall or nprobe >= nlist:
            return nprobe, recall
        nprobe *= 2


def pilot_probe_fraction(
    pool: np.ndarray,
    queries: np.ndarray,
    k: int,
    target_recall: float,
    *,
    pilot_size: int = 100_000,
    seed: int = 0,
) -> float:
    """The share of IVF lists a query must scan to reach ``target_recall``, measured on a pilot index.

    The pilot indexes a random subsample with the same number of vectors per list as the full index
    would have, so the fraction carries over; it costs a small k-means and a few searches.
    """
    n = len(pool)
    rng = np.random.default_rng(seed)
    sample = pool[np.sort(rng.choice(n, min(n, pilot_size), replace=False))] if n > pilot_size else pool
    per_list = n / default_nlist(n)
    nlist = max(16, int(round(len(sample) / per_list)))
    index = build_index(sample, estimate("ivf_flat", len(sample), pool.shape[1], 1, nlist=nlist), seed=seed)
    probes = queries[rng.choice(len(queries), min(256, len(queries)), replace=False)]
    nprobe, _ = tune_nprobe(index, sample, probes, min(k, len(sample)), target_recall)
    return nprobe / nlist


def plan_index(
    pool: np.ndarray,
    queries: np.ndarray,
    k: int,
    target_recall: float,
    *,
    memory_budget_bytes=None,
    seed: int = 0,
) -> tuple[IndexPlan, float | None]:
    """``choose_index`` with the probe fraction measured on a pilot when IVF could pay off at all."""
    n, d, q = len(pool), pool.shape[1], len(queries)
    optimistic = choose_index(
        n, d, q, memory_budget_bytes=memory_budget_bytes, probe_fraction=OPTIMISTIC_PROBE_FRACTION
    )
    if optimistic.exact:
        return choose_index(n, d, q, memory_budget_bytes=memory_budget_bytes), None
    fraction = pilot_probe_fraction(pool, queries, k, target_recall, seed=seed)
    return choose_index(n, d, q, memory_budget_bytes=memory_budget_bytes, probe_fraction=fraction), fraction
