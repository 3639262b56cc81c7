"""faiss index building, search, and recall measured against exact search."""

from __future__ import annotations

import numpy as np

from .index_choice import (
    OPTIMISTIC_PROBE_FRACTION,
    POINTS_PER_CENTROID,
    IndexPlan,
    choose_index,
    default_nlist,
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
    """Brute-force inner-product top-k, without copying the pool into an index."""
    import faiss

    return faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(pool, dtype=np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )


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
    nlist: int | None = None,
    seed: int = 0,
) -> float:
    """The share of IVF lists a query must scan to reach ``target_recall``, estimated without building the index.

    A coarse quantiser is trained cheaply (4 k-means iterations on 8 points per list); the exact
    top-k of up to 128 sample queries are found by brute force; each true neighbour is assigned to
    its list, and the recall an ``nprobe`` would give is read off from where those lists rank among
    the query's nearest centroids. Costs a small k-means and 256 exact searches, not a full build.
    """
    import faiss

    n, d = pool.shape
    nlist = nlist or default_nlist(n)
    rng = np.random.default_rng(seed)
    sample = pool[rng.choice(n, min(n, 8 * nlist), replace=False)]
    kmeans = faiss.Kmeans(d, nlist, niter=4, max_points_per_centroid=8, seed=seed, spherical=True)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    centroids = kmeans.centroids
    probes = np.ascontiguousarray(
        queries[rng.choice(len(queries), min(128, len(queries)), replace=False)], dtype=np.float32
    )
    neighbours = exact_search(pool, probes, min(k, n))[1]
    list_of = faiss.knn(
        np.ascontiguousarray(pool[neighbours.reshape(-1)], dtype=np.float32),
        centroids,
        1,
        metric=faiss.METRIC_INNER_PRODUCT,
    )[1].reshape(neighbours.shape)
    ranking = faiss.knn(probes, centroids, nlist, metric=faiss.METRIC_INNER_PRODUCT)[1]  # lists by closeness
    position = np.empty_like(ranking)
    position[np.arange(len(ranking))[:, None], ranking] = np.arange(nlist)[None, :]
    needed = np.take_along_axis(position, list_of, axis=1)  # probes needed to reach each true neighbour
    nprobe = 1
    while nprobe < nlist and (needed < nprobe).mean() < target_recall:
        nprobe *= 2
    return min(nprobe, nlist) / nlist


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
