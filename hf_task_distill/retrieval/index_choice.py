"""Which faiss index to build: pure functions of pool size, dimension, query count and memory budget.

No I/O and no faiss here, so the choice can be tested and reasoned about on paper. Costs are counted
in multiply-adds with a deliberately simple model (see ``estimate``); what matters is the ranking:
exact search costs ``Q * N * d`` and nothing to build, an IVF index pays k-means training and
assignment up front and then scans only ``nprobe / nlist`` of the pool per query. For one-shot
curation with few queries exact search often wins; with many queries IVF does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "OPTIMISTIC_PROBE_FRACTION",
    "IndexPlan",
    "candidate_plans",
    "choose_index",
    "default_nlist",
    "estimate",
    "format_bytes",
]

KMEANS_ITERATIONS = 10  # faiss default niter for IVF coarse quantisers
POINTS_PER_CENTROID = 64  # k-means training sample per list (faiss' default is 256; 64 builds 4x faster)
ASSUMED_PROBE_FRACTION = 1 / 8  # nprobe/nlist assumed before tuning: pessimistic (overlapping clusters)
OPTIMISTIC_PROBE_FRACTION = 1 / 256  # well-separated data: if IVF loses even then, no pilot is needed

# Relative cost of one multiply-add in each kind of work, measured with faiss on 2 CPU cores
# (benchmarks/retrieval_index.py at 10^5 x 384): exact search is one BLAS matrix product (6.2e10
# MAC/s); k-means training and assignment ran at about half that; scanning inverted lists is not a
# matrix product and ran 7-9x slower per multiply-add. These weights turn operation counts into time.
WEIGHT_EXACT = 1.0
WEIGHT_KMEANS = 2.0
WEIGHT_LIST_SCAN = {"ivf_flat": 9.0, "ivf_sq8": 7.0, "ivf_pq": 9.0}


@dataclass(frozen=True)
class IndexPlan:
    """A faiss ``index_factory`` string with its expected memory and cost.

    Args:
        factory (`str`): the ``faiss.index_factory`` string (``"Flat"``, ``"IVF1024,SQ8"``...).
        nlist (`int`, *optional*, defaults to 0): inverted lists (0 for exact search).
        nprobe (`int`, *optional*, defaults to 0): lists scanned per query (0 for exact search).
        memory_bytes (`int`, *optional*, defaults to 0): the index's expected size in bytes.
        build_cost (`float`, *optional*, defaults to 0.0): weighted multiply-adds to train and fill it.
        search_cost (`float`, *optional*, defaults to 0.0): weighted multiply-adds to search every query.
    """

    factory: str
    nlist: int = 0
    nprobe: int = 0
    memory_bytes: int = 0
    build_cost: float = 0.0
    search_cost: float = 0.0

    @property
    def total_cost(self) -> float:
        """``build_cost + search_cost``, in weighted multiply-adds: what :func:`choose_index` ranks by."""
        return self.build_cost + self.search_cost

    @property
    def exact(self) -> bool:
        """Whether the plan is exact (brute-force) search, ``factory == "Flat"``."""
        return self.factory == "Flat"


def format_bytes(size: float) -> str:
    """``size`` bytes in the largest binary unit that keeps it at least 1, to three significant
    digits (``"100 B"``, ``"3.12 KiB"``, ``"600 MiB"``, ``"1.50 GiB"``): a tiny pool's sizes are not ``"0.00 GiB"``."""
    value, unit = float(size), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.{2 if abs(value) < 10 else 1 if abs(value) < 100 else 0}f} {unit}"


def default_nlist(num_vectors: int) -> int:
    """About ``4 * sqrt(N)`` lists, rounded to a power of two, within faiss' practical range."""
    target = 4 * math.sqrt(max(num_vectors, 1))
    return int(min(2**16, max(16, 2 ** round(math.log2(target)))))


def estimate(
    factory_kind: str,
    num_vectors: int,
    dim: int,
    num_queries: int,
    nlist: int = 0,
    pq_m: int = 0,
    probe_fraction: float = ASSUMED_PROBE_FRACTION,
) -> IndexPlan:
    """Memory (bytes) and cost (multiply-adds) of one index kind: ``flat``, ``ivf_flat``, ``ivf_sq8``, ``ivf_pq``."""
    n, d, q = num_vectors, dim, num_queries
    if factory_kind == "flat":
        return IndexPlan("Flat", memory_bytes=4 * n * d, search_cost=WEIGHT_EXACT * float(q) * n * d)
    nprobe = max(1, round(nlist * probe_fraction))
    train_points = min(n, POINTS_PER_CENTROID * nlist)
    # k-means on the training sample, then assigning every vector to its list
    build = WEIGHT_KMEANS * (KMEANS_ITERATIONS * train_points * nlist * d + n * nlist * d)
    scanned = nprobe * n / nlist  # vectors compared per query
    coarse = WEIGHT_KMEANS * nlist * d  # choosing the lists to probe
    scan = WEIGHT_LIST_SCAN[factory_kind]
    bytes_per_vector = {"ivf_flat": 4 * d, "ivf_sq8": d, "ivf_pq": pq_m}[factory_kind]
    if factory_kind == "ivf_pq":
        build += (
            WEIGHT_KMEANS * KMEANS_ITERATIONS * min(n, 256 * POINTS_PER_CENTROID) * 256 * d
        )  # PQ codebooks
        per_query = coarse + scan * (nprobe * 256 * d + scanned * pq_m)  # lookup tables, then table sums
        factory = f"IVF{nlist},PQ{pq_m}"
    else:
        per_query = coarse + scan * scanned * d
        factory = f"IVF{nlist},{'Flat' if factory_kind == 'ivf_flat' else 'SQ8'}"
    memory = n * (bytes_per_vector + 8) + 4 * nlist * d  # codes + ids + centroids
    return IndexPlan(factory, nlist, nprobe, int(memory), float(build), float(q) * per_query)


def candidate_plans(
    num_vectors: int, dim: int, num_queries: int, probe_fraction: float = ASSUMED_PROBE_FRACTION
) -> list[IndexPlan]:
    """Exact search plus IVF-Flat, IVF-SQ8 and IVF-PQ at the default list count."""
    plans = [estimate("flat", num_vectors, dim, num_queries)]
    if num_vectors >= 1024:  # IVF needs enough points to train its lists
        nlist = min(default_nlist(num_vectors), max(16, num_vectors // 39))
        pq_m = next(m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0 and m <= dim)
        for kind in ("ivf_flat", "ivf_sq8", "ivf_pq"):
            plans.append(
                estimate(
                    kind, num_vectors, dim, num_queries, nlist=nlist, pq_m=pq_m, probe_fraction=probe_fraction
                )
            )
    return plans


def choose_index(
    num_vectors: int,
    dim: int,
    num_queries: int,
    *,
    memory_budget_bytes: int | None = None,
    probe_fraction: float = ASSUMED_PROBE_FRACTION,
) -> IndexPlan:
    """The cheapest plan (build + search) that fits the memory budget.

    ``probe_fraction`` is the share of lists a query must scan to reach the recall target; it
    depends on the data, so the builder measures it on a pilot index when IVF could pay off
    (:func:`~hf_task_distill.retrieval.search.pilot_probe_fraction`); the default is pessimistic.

    Exact search is preferred on ties (no recall loss). Compressed codes (SQ8, PQ) are only
    chosen when float vectors do not fit. Raises ``ValueError`` if nothing fits, giving the budget
    and the smallest plan's need in units that tell them apart (:func:`format_bytes`).
    """
    if num_vectors < 1 or dim < 1:
        raise ValueError(f"cannot plan an index for {num_vectors} vectors of dimension {dim}")
    plans = candidate_plans(num_vectors, dim, max(1, num_queries), probe_fraction)
    fitting = [p for p in plans if memory_budget_bytes is None or p.memory_bytes <= memory_budget_bytes]
    if not fitting:
        smallest = min(plans, key=lambda p: p.memory_bytes)
        budget, needed = format_bytes(memory_budget_bytes), format_bytes(smallest.memory_bytes)
        if budget == needed:  # within rounding: the exact counts tell them apart
            budget, needed = f"{memory_budget_bytes:,} bytes", f"{smallest.memory_bytes:,} bytes"
        raise ValueError(
            f"no index for {num_vectors} x {dim} vectors fits {budget}; the smallest "
            f"({smallest.factory}) needs {needed}: raise the budget or use an on-disk index"
        )
    # Lossy codes cap the reachable recall (SQ8 stayed below 0.95 at full scan on tight clusters), so
    # they are used only when float vectors do not fit.
    lossless = [p for p in fitting if p.exact or p.factory.endswith(",Flat")]
    return min(lossless or fitting, key=lambda p: (p.total_cost, not p.exact))
