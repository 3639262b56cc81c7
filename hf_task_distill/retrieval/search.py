"""faiss index building, search, and recall measured against exact search.

The pool is held as the float16 array the embedding store keeps (2 bytes per value) and converted
to float32 one block of rows at a time, so the float32 pool never exists in memory: exact search
merges per-block top-k results, IVF indexes train on a sample and are filled block by block. Peak
memory is the float16 pool plus the index plus one block (``POOL_BLOCK_ROWS`` x d x 4 bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from .index_choice import (
    OPTIMISTIC_PROBE_FRACTION,
    POINTS_PER_CENTROID,
    IndexPlan,
    choose_index,
    default_nlist,
)

__all__ = [
    "POOL_BLOCK_ROWS",
    "build_index",
    "check_embeddings",
    "exact_search",
    "pilot_probe_fraction",
    "plan_index",
    "recall_at_k",
    "retrieve",
    "search",
    "tune_nprobe",
]

logger = logging.getLogger(__name__)

POOL_BLOCK_ROWS = 1 << 17  # 131,072 rows: 192 MiB of float32 at d=384, large enough for full-speed BLAS


def _float32_blocks(pool: np.ndarray, block_rows: int = POOL_BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(pool), block_rows):
        yield start, np.ascontiguousarray(pool[start : start + block_rows], dtype=np.float32)


def check_embeddings(vectors: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """2-D, finite, of the expected dimension; errors name the problem and the first bad row.

    float16 stays float16 (the pool's storage type, converted per block when searched); anything
    else becomes contiguous float32.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, d] array, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(
            f"{name} have dimension {vectors.shape[1]} but the pool has {dim}: embed both with the same model"
        )
    dtype = np.float16 if vectors.dtype == np.float16 else np.float32
    vectors = np.ascontiguousarray(vectors, dtype=dtype)
    bad = [
        start + np.flatnonzero(~np.isfinite(vectors[start : start + POOL_BLOCK_ROWS]).all(axis=1))
        for start in range(0, len(vectors), POOL_BLOCK_ROWS)
    ]
    bad = np.concatenate(bad)
    if bad.size:
        raise ValueError(f"{name} hold {bad.size} row(s) with NaN/inf values (first: row {bad[0]})")
    return vectors


def zero_rows(vectors: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``vectors`` ``[n, d]`` whose L2 norm is (almost) zero, block by block.

    An encoder whose last activation is a ReLU can map an image to the zero vector. Such a row has
    cosine 0 with everything: as a pool image it ranks last for every query, as a query its
    "neighbours" are arbitrary ties, as a held-out image it hides its copies from the leakage guard."""
    found = [
        start
        + np.flatnonzero(
            np.linalg.norm(vectors[start : start + POOL_BLOCK_ROWS].astype(np.float32), axis=1) < 1e-6
        )
        for start in range(0, len(vectors), POOL_BLOCK_ROWS)
    ]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def require_faiss() -> None:
    """Raise ``ImportError`` with the install command when faiss is missing: retrieval needs it, and a
    run should learn so before it finetunes a teacher and embeds a pool, not after."""
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        raise ImportError(
            "retrieval needs faiss, which is not installed: pip install 'hf-task-distill[faiss]' "
            "(faiss-cpu), or 'hf-task-distill[gpu]' for a CUDA build"
        )


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (``pip install faiss-gpu-cu12``)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(pool: np.ndarray, plan: IndexPlan, *, use_gpu: bool | None = None, seed: int = 0):
    """Train and fill the index ``plan`` describes, for inner-product search on normalised vectors.

    IVF quantisers train on a random sample of ``POINTS_PER_CENTROID`` rows per list (what faiss
    would subsample anyway); the index is then filled one float32 block at a time. ``use_gpu``
    (default: when available) moves the index to every visible GPU.
    """
    import faiss

    index = faiss.index_factory(pool.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    if use_gpu is None:
        use_gpu = gpu_available()
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index) if plan.nlist else None
        if ivf is not None:
            ivf.cp.seed = seed
            ivf.cp.max_points_per_centroid = POINTS_PER_CENTROID
        sample_size = min(len(pool), POINTS_PER_CENTROID * max(plan.nlist, 256))
        rows = np.sort(np.random.default_rng(seed).choice(len(pool), sample_size, replace=False))
        index.train(np.ascontiguousarray(pool[rows], dtype=np.float32))
    for _, block in _float32_blocks(pool):
        index.add(block)
    if plan.nprobe:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", plan.nprobe)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest pool rows of each query in a faiss index (inner product on normalised vectors).

    Args:
        index (`faiss.Index`): an index from :func:`build_index`.
        queries (`np.ndarray` of shape `[num_queries, dim]`): query embeddings (cast to float32).
        k (`int`): neighbours per query.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: ``(scores, ids)``, each of shape `[num_queries, k]`, best first;
        ``ids`` are pool rows, ``-1`` where fewer than ``k`` were found.
    """
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def exact_search(
    pool: np.ndarray, queries: np.ndarray, k: int, *, block_rows: int = POOL_BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k over the pool, block by block, without building an index.

    Each float32 block is searched with ``faiss.knn`` (one BLAS product) and the per-block top-k are
    merged in a heap, so a float16 pool is never converted as a whole.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(pool) <= block_rows:
        pool = np.ascontiguousarray(pool, dtype=np.float32)
        return faiss.knn(queries, pool, k, metric=faiss.METRIC_INNER_PRODUCT)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, block in _float32_blocks(pool, block_rows):
        scores, ids = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.D, heap.I


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
    sample = pool[np.sort(rng.choice(n, min(n, 8 * nlist), replace=False))]
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


def retrieve(
    pool: np.ndarray,
    queries: np.ndarray,
    k: int,
    plan: IndexPlan,
    *,
    recall_target: float = 0.95,
    tune_queries: int = 256,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Top-``k`` pool neighbours of every query with the index ``plan`` describes.

    Exact plans search the pool directly (recall 1.0, nothing built). IVF plans are built, then
    ``nprobe`` is tuned on ``tune_queries`` random queries to reach ``recall_target`` against exact
    search. Returns ``(scores, ids, nprobe, tuned recall)``; the builder and the benchmark both
    come through here, so what is benchmarked is what runs.
    """
    if plan.exact:
        scores, ids = exact_search(pool, queries, k)
        return scores, ids, 0, 1.0
    index = build_index(pool, plan, use_gpu=use_gpu, seed=seed)
    rng = np.random.default_rng(seed)
    sample = queries[np.sort(rng.choice(len(queries), min(tune_queries, len(queries)), replace=False))]
    nprobe, recall = tune_nprobe(index, pool, sample, k, recall_target)
    if recall < recall_target:
        logger.warning(
            "%s reaches recall@%d %.3f < %.2f even scanning every list: lossy codes cap recall; "
            "give a larger memory budget for float vectors or exact search",
            plan.factory,
            k,
            recall,
            recall_target,
        )
    scores, ids = search(index, queries, k)
    return scores, ids, nprobe, recall
