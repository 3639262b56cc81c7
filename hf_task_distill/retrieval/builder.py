"""``RetrievalTransferSetBuilder``: the pool images nearest to the labelled target images.

Composes the pieces of this package: embed pool, queries and held-out images once (resumable
shards), choose an index from size/queries/memory (:mod:`.index_choice`), search (tuning ``nprobe`` to
a recall target for IVF), take the union of per-query neighbours, drop near-duplicates of the
validation/test images, and return a ``datasets.Dataset`` of pool rows with provenance columns.
The budget's policy (``k`` per query, which rows a total budget keeps) is pure functions in
:mod:`.curation`; ``build`` runs the steps in order and fills :class:`TransferSetStats`.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..checks import check_int
from ..data.loading import find_image_column, find_label_column
from ..data.validation import UNLABELLED, check_dataset_type, label_array
from ..devices import process_state
from ..inference import is_streamed
from ..options import RetrievalSettings, renamed_field, resolve_renamed
from .curation import budget_mask, drop_leaked, neighbours_per_query, union_of_neighbours
from .embedding import EmbeddingStore, ImageEncoder, TeacherConfidence, embed_pool
from .search import check_embeddings, plan_index, require_faiss, retrieve, zero_rows

__all__ = ["RetrievalConfig", "RetrievalTransferSetBuilder", "TransferSetStats"]

logger = logging.getLogger(__name__)


@dataclass
class RetrievalConfig(RetrievalSettings):
    """How many images to retrieve and which to refuse, and how the pool is embedded. The retrieval
    fields are :class:`~hf_task_distill.options.RetrievalSettings`', which the command line's
    ``--transfer retrieval`` flags share (one name, one default).

    Give exactly one of ``per_query_k`` (the paper's balanced scheme: the ``k`` nearest pool images of
    every labelled image, de-duplicated) and ``transfer_budget`` (a total, spread evenly over the query classes; ``budget`` until 0.2.0, with a warning).
    Every bound is checked on construction, before a pool is embedded.

    Args:
        per_query_k (`int`, *optional*):
            Neighbours per query image, >= 1.
        transfer_budget (`int`, *optional*):
            Total transfer-set size in images, >= 1, spread evenly over the classes; the search widens
            ``k`` until the images that pass the filters can fill it (or ``k`` spans the pool).
        leakage_threshold (`float`, *optional*, defaults to 0.95):
            Cosine similarity in [-1, 1] at or above which a pool image counts as a copy of a
            validation/test image and is removed.
        min_similarity (`float`, *optional*):
            Drop neighbours whose cosine similarity to their query is below this, in [-1, 1].
        min_teacher_confidence (`float`, *optional*):
            With ``build(..., teacher=)``: drop images whose top-class probability is below this, in [0, 1].
        memory_budget_gb (`float`, *optional*):
            Memory the faiss index may use, in GiB (2**30 bytes), > 0; ``None`` for no limit.
        recall_target (`float`, *optional*, defaults to 0.95):
            recall@k against exact search that an IVF index's ``nprobe`` is tuned to, in (0, 1].
        shard_size (`int`, *optional*, defaults to 4096):
            Rows per embedding shard on disk (the unit of resumption).
        batch_size (`int`, *optional*, defaults to 64):
            Images per encoder forward pass.
        seed (`int`, *optional*, defaults to 0):
            Seed of the IVF training sample and tuning.

    Raises:
        ValueError: if neither or both of ``per_query_k`` and ``transfer_budget`` are given, or a value is out of
            range (the message names the field).
    """

    shard_size: int = field(
        default=4096, metadata={"help": "Rows per embedding shard (the unit of resumption)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images per encoder forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the index's training sample and recall pilot."})
    budget: int | None = renamed_field()

    _renamed = {"budget": "transfer_budget"}

    def __post_init__(self):
        resolve_renamed(self)
        # 0 is a value, not "not given": every bound is checked here, before the pool is embedded
        if (self.per_query_k is None) == (self.transfer_budget is None):
            raise ValueError("give exactly one of per_query_k= or budget= (renamed transfer_budget=)")
        self.check_retrieval_settings()
        self.shard_size = check_int(self.shard_size, "shard_size", minimum=1)
        self.batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        self.seed = check_int(self.seed, "seed")


@dataclass
class TransferSetStats:
    """Sizes at each step, for the run summary and the dataset card.

    Counts are images (rows) unless said otherwise: ``pool_rows`` seen, ``pool_embedded``,
    ``pool_unreadable`` (skipped), ``queries`` embedded, ``queries_unreadable``, ``k`` (neighbours per
    query, after widening), ``neighbours`` found, ``after_dedup`` (unique), ``pool_zero_embeddings`` /
    ``queries_zero_embeddings`` (all-zero vectors), ``removed_leakage``, ``removed_low_confidence``,
    ``removed_budget``, ``final``; ``index`` (the faiss factory string), ``nprobe``, ``recall_at_k``
    (measured when tuned, else ``None``) and ``encoder`` (its name).
    """

    pool_rows: int = 0
    pool_embedded: int = 0
    pool_unreadable: int = 0
    queries: int = 0
    queries_unreadable: int = 0
    k: int = 0
    neighbours: int = 0
    after_dedup: int = 0
    pool_zero_embeddings: int = 0
    queries_zero_embeddings: int = 0
    removed_leakage: int = 0
    removed_low_confidence: int = 0
    removed_budget: int = 0
    final: int = 0
    index: str = ""
    nprobe: int = 0
    recall_at_k: float | None = None
    encoder: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (``dataclasses.asdict``), for the manifest and the dataset card."""
        return asdict(self)


class RetrievalTransferSetBuilder:
    """Build a transfer set from ``pool`` around ``queries`` (the labelled target images).

    The retrieval step of Vemulapalli et al. (ICML 2024): embed the pool and the queries with one
    encoder (L2-normalised), take each query's nearest pool images by cosine similarity (exact search
    or a faiss IVF index, chosen by :func:`~hf_task_distill.retrieval.choose_index`), de-duplicate,
    remove near-copies of validation/test images, and cut to the budget.

    Args:
        encoder (`ImageEncoder` or `str`):
            The embedding model, or a Hub id / local folder to load one from (``ImageEncoder.from_pretrained``).
        config (`RetrievalConfig`, *optional*):
            The settings; when not given, built from ``config_overrides``.
        **config_overrides:
            ``RetrievalConfig`` fields (``per_query_k=``, ``transfer_budget=``...), used when ``config`` is ``None``.

    Raises:
        ImportError: if faiss is not installed (the message gives the install command).
        ValueError: if the settings are invalid (see :class:`RetrievalConfig`).

    Example:

    ```python
    >>> builder = RetrievalTransferSetBuilder("facebook/dinov2-small", per_query_k=50)
    >>> transfer, stats = builder.build(pool, task["train"], heldout=[task["test"]], embeddings_dir="emb/")
    ```
    """

    def __init__(
        self, encoder: ImageEncoder | str, config: RetrievalConfig | None = None, **config_overrides: Any
    ):
        require_faiss()
        self.encoder = ImageEncoder.from_pretrained(encoder) if isinstance(encoder, str) else encoder
        self.config = config or RetrievalConfig(**config_overrides)
        self.stats = TransferSetStats()

    def _embed(self, dataset, directory: str, encoder=None) -> tuple[np.ndarray, np.ndarray, EmbeddingStore]:
        """Embed ``dataset`` (shards split across accelerate processes), then load every shard."""
        state = process_state()
        store = embed_pool(
            dataset,
            encoder or self.encoder,
            directory,
            shard_size=self.config.shard_size,
            batch_size=self.config.batch_size,
            process_index=state.process_index,
            num_processes=state.num_processes,
            progress=state.is_local_main_process,
        )
        state.wait_for_everyone()
        vectors, rows = store.load()
        return vectors, rows, store

    def build(
        self,
        pool,
        queries,
        *,
        heldout=(),
        embeddings_dir: str | os.PathLike,
        pool_embeddings=None,
        pool_embeddings_dir: str | os.PathLike | None = None,
        teacher=None,
    ):
        """Retrieve the transfer set; return ``(transfer_set, stats)``.

        ``pool``: a ``datasets.Dataset`` of images. ``queries``: the labelled target images (labels, if
        present, spread a ``budget`` evenly over classes). ``heldout``: datasets whose near-duplicates
        must never enter the transfer set (validation, test). Embeddings are cached under
        ``embeddings_dir`` and reused by later runs; ``pool_embeddings_dir`` puts the pool's elsewhere,
        e.g. in one folder shared by several builds over the same pool with the same encoder (a
        folder holding another pool's or encoder's embeddings is refused). ``pool_embeddings``: precomputed pool vectors,
        either ``[len(pool), d]`` or ``(vectors, pool_rows)``; they must come from the same encoder
        (a different dimension is refused) and are L2-normalised here. ``teacher``: a finetuned
        classifier (or a :class:`TeacherConfidence`); its top-class probability on each retrieved
        image becomes a ``teacher_confidence`` column, and ``min_teacher_confidence`` drops the
        images it is unsure about before the budget is applied.

        Args:
            pool (`datasets.Dataset` or `datasets.IterableDataset`): the unlabelled images to retrieve from.
            queries (`datasets.Dataset`): the labelled target images.
            heldout (`Sequence[datasets.Dataset]`, *optional*): splits whose near-copies are removed.
            embeddings_dir (`str` or `os.PathLike`): where embeddings are cached (resumable shards).
            pool_embeddings (`np.ndarray` of shape `[len(pool), dim]`, or `(vectors, pool_rows)`, *optional*):
                Precomputed pool embeddings (map-style pool only).
            pool_embeddings_dir (`str` or `os.PathLike`, *optional*): where the pool's embeddings go;
                defaults to ``<embeddings_dir>/pool``.
            teacher (`PreTrainedModel` or `TeacherConfidence`, *optional*): scores each retrieved image.

        Returns:
            `tuple[datasets.Dataset, TransferSetStats]`: the pool's retrieved rows (images included) with
            ``pool_index``, ``query_index``, ``rank`` (int64) and ``score`` (float32 cosine) columns, and
            ``teacher_confidence`` with a teacher; and the sizes at each step.

        Raises:
            TypeError: if ``pool``, ``queries`` or a ``heldout`` split is not a ``datasets`` dataset.
            ValueError: if the pool or queries are empty, ``min_teacher_confidence`` is set without a
                teacher, precomputed embeddings do not match the pool or a streamed pool, embeddings
                are invalid (NaN, wrong dimension), or no image is left after the filters.
        """
        cfg, stats = self.config, TransferSetStats(encoder=self.encoder.name)
        embeddings_dir = os.fspath(embeddings_dir)
        streamed = is_streamed(pool)
        _check_build_inputs(
            pool,
            queries,
            heldout,
            streamed=streamed,
            min_teacher_confidence=cfg.min_teacher_confidence,
            teacher=teacher,
        )
        pool_vectors, pool_rows = self._pool_vectors(
            pool, streamed, embeddings_dir, pool_embeddings, pool_embeddings_dir, stats
        )
        query_vectors, query_rows = self._query_vectors(queries, embeddings_dir, pool_vectors.shape[1], stats)
        query_labels = _query_labels(queries, query_rows)  # None when unlabelled
        k = _bounded_k(
            neighbours_per_query(
                query_labels,
                len(query_rows),
                per_query_k=cfg.per_query_k,
                transfer_budget=cfg.transfer_budget,
            ),
            len(pool_vectors),
        )
        held = self._heldout_vectors(heldout, embeddings_dir, pool_vectors.shape[1])
        picked, plan = self._search(pool_vectors, query_vectors, held, k, stats)
        stats.index = plan.factory
        picked["pool_index"] = pool_rows[picked["pool_index"]]  # embedding row -> pool row
        picked["query_index"] = query_rows[picked["query_index"]]
        candidates = None
        if teacher is not None:
            picked, candidates = self._filter_by_teacher(pool, picked, teacher, embeddings_dir, stats)
        _check_something_left(picked, stats, cfg.leakage_threshold)
        keep = budget_mask(
            picked["score"], _query_classes(picked, query_labels, query_rows), cfg.transfer_budget
        )
        stats.removed_budget = int((~keep).sum())
        picked = {name: column[keep] for name, column in picked.items()}
        stats.final = len(picked["pool_index"])
        _warn_if_short(stats, cfg.transfer_budget)
        transfer = _with_provenance(pool, candidates, keep, picked)
        self.stats = stats
        return transfer, stats

    def _pool_vectors(
        self, pool, streamed: bool, embeddings_dir: str, pool_embeddings, pool_embeddings_dir, stats
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pool's embeddings (computed and cached, or the precomputed ones checked) and their pool
        rows; fills the pool's counts in ``stats``."""
        if pool_embeddings is None:
            pool_dir = os.fspath(pool_embeddings_dir or os.path.join(embeddings_dir, "pool"))
            pool_vectors, pool_rows, pool_store = self._embed(pool, pool_dir)
            stats.pool_unreadable = pool_store.skipped
        else:
            if streamed:
                raise ValueError("precomputed pool embeddings need a map-style pool (a datasets.Dataset)")
            pool_vectors, pool_rows = _precomputed(pool_embeddings, len(pool))
        stats.pool_rows = pool_store.rows_seen if streamed else len(pool)
        stats.pool_embedded = len(pool_rows)
        pool_vectors = check_embeddings(pool_vectors, "pool embeddings")
        stats.pool_zero_embeddings = _count_zero_pool_rows(pool_vectors, pool_rows, self.encoder.name)
        return pool_vectors, pool_rows

    def _query_vectors(self, queries, embeddings_dir: str, dim: int, stats) -> tuple[np.ndarray, np.ndarray]:
        """The queries' embeddings (``dim`` wide, as the pool's) less the all-zero ones, and their rows."""
        query_vectors, query_rows, query_store = self._embed(queries, os.path.join(embeddings_dir, "queries"))
        stats.queries_unreadable = query_store.skipped
        query_vectors = check_embeddings(query_vectors.astype(np.float32), "query embeddings", dim=dim)
        query_vectors, query_rows, stats.queries_zero_embeddings = _drop_zero_queries(
            query_vectors, query_rows, self.encoder.name
        )
        stats.queries = len(query_rows)
        return query_vectors, query_rows

    def _heldout_vectors(self, heldout, embeddings_dir: str, dim: int) -> np.ndarray | None:
        """Every held-out split's embeddings in one array, or ``None`` without held-out splits."""
        heldout_vectors = [
            self._embed(ds, os.path.join(embeddings_dir, f"heldout-{i}"))[0] for i, ds in enumerate(heldout)
        ]
        if not heldout_vectors:
            return None
        return check_embeddings(np.concatenate(heldout_vectors), "held-out embeddings", dim=dim)

    def _filter_by_teacher(self, pool, picked: dict[str, np.ndarray], teacher, embeddings_dir: str, stats):
        """Score the picked rows with the teacher, drop those under ``min_teacher_confidence`` and add a
        ``teacher_confidence`` column. Returns ``(picked, candidates)``, the kept pool rows as a Dataset."""
        cfg = self.config
        candidates = _select_rows(pool, picked["pool_index"])
        confidence = self._teacher_confidence(candidates, teacher, embeddings_dir, picked["pool_index"])
        keep = confidence >= (cfg.min_teacher_confidence if cfg.min_teacher_confidence is not None else -1)
        stats.removed_low_confidence = int((~keep).sum())
        picked = {name: column[keep] for name, column in picked.items()}
        picked["teacher_confidence"] = confidence[keep]
        return picked, candidates.select(np.flatnonzero(keep).tolist())

    def _search(self, pool_vectors, query_vectors, held, k: int, stats: TransferSetStats):
        """The union of every query's ``k`` nearest pool images, less near-copies of ``held``
        (validation/test embeddings, or ``None``). With a budget, ``k`` doubles until the images that
        pass the leakage guard can fill it (or ``k`` spans the pool): the guard must not leave the
        transfer set short of its budget when the pool has more to give. Returns ``(picked, plan)``."""
        cfg = self.config
        memory = None if cfg.memory_budget_gb is None else int(cfg.memory_budget_gb * 2**30)
        verdicts: dict[int, bool] = {}  # guard verdicts by pool embedding row, kept across rounds
        while True:
            stats.k = k
            plan, _ = plan_index(
                pool_vectors, query_vectors, k, cfg.recall_target, memory_budget_bytes=memory, seed=cfg.seed
            )
            scores, ids, stats.nprobe, stats.recall_at_k = retrieve(
                pool_vectors, query_vectors, k, plan, recall_target=cfg.recall_target, seed=cfg.seed
            )
            picked = union_of_neighbours(scores, ids, min_similarity=cfg.min_similarity)
            stats.neighbours = int((ids >= 0).sum())
            stats.after_dedup = len(picked["pool_index"])
            if held is not None:  # only this round's new candidates meet the guard
                picked, stats.removed_leakage = drop_leaked(
                    picked, pool_vectors, held, cfg.leakage_threshold, verdicts
                )
            found = len(picked["pool_index"])
            if cfg.transfer_budget is None or found >= cfg.transfer_budget or k >= len(pool_vectors):
                break
            # queries of one class share neighbours, and the guard removes some: search wider
            logger.info(
                "k=%d found %d unique images (%d near-copies of held-out images removed) for transfer_budget=%d: "
                "searching again with k=%d",
                k,
                found,
                stats.removed_leakage,
                cfg.transfer_budget,
                min(2 * k, len(pool_vectors)),
            )
            k = min(2 * k, len(pool_vectors))
        _warn_if_guard_dominates(stats, cfg.leakage_threshold)
        return picked, plan

    def _teacher_confidence(
        self, candidates, teacher, embeddings_dir: str, pool_rows: np.ndarray
    ) -> np.ndarray:
        """The teacher's top-class probability per candidate row; unreadable rows get 0 (dropped).

        Cached under a folder named after the teacher and the candidate rows, so a later run with
        other candidates never reads these scores.
        """
        from datasets.fingerprint import Hasher

        scorer = teacher if isinstance(teacher, TeacherConfidence) else TeacherConfidence(teacher)
        key = Hasher.hash((scorer.name, pool_rows.tolist()))[:16]
        values, rows, _ = self._embed(
            candidates, os.path.join(embeddings_dir, f"teacher-{key}"), encoder=scorer
        )
        confidence = np.zeros(len(candidates), dtype=np.float32)
        confidence[rows] = values[:, 0]
        return confidence


def _check_build_inputs(pool, queries, heldout, *, streamed: bool, min_teacher_confidence, teacher) -> None:
    """``build``'s argument checks, in the order it documents: types, emptiness, then the teacher."""
    if not streamed:
        check_dataset_type(pool, "the pool")
    check_dataset_type(queries, "the queries")
    for name, extra in enumerate(heldout):
        check_dataset_type(extra, f"heldout[{name}]")
    if not streamed and len(pool) == 0:
        raise ValueError("the pool is empty: nothing to retrieve from")
    if len(queries) == 0:
        raise ValueError("there are no query images")
    if min_teacher_confidence is not None and teacher is None:
        raise ValueError("min_teacher_confidence needs a teacher: pass teacher= to build()")


def _query_labels(queries, query_rows: np.ndarray) -> np.ndarray | None:
    """The class of each embedded query, or ``None`` when the queries are unlabelled (in part or all)."""
    column = find_label_column(queries.features)
    if column is None:
        return None
    labels = label_array(queries, column)[query_rows]
    return labels if (labels != UNLABELLED).all() else None


def _query_classes(
    picked: dict[str, np.ndarray], labels: np.ndarray | None, query_rows: np.ndarray
) -> np.ndarray | None:
    """The class of each picked row's query (``None`` without labels): the groups a budget spreads over."""
    if labels is None:
        return None
    label_of_row = dict(zip(query_rows.tolist(), labels.tolist(), strict=True))
    return np.array([label_of_row[q] for q in picked["query_index"].tolist()])


def _bounded_k(k: int, pool_size: int) -> int:
    """``k`` neighbours per query, at most the ``pool_size`` embedded pool images (a warning when cut)."""
    if k > pool_size:
        logger.warning("k=%d is more than the %d embedded pool images: using k=%d", k, pool_size, pool_size)
        return pool_size
    return k


def _check_something_left(picked: dict[str, np.ndarray], stats: TransferSetStats, threshold: float) -> None:
    """Raise when the filters left no pool image, saying how many each removed."""
    if len(picked["pool_index"]) == 0:
        raise ValueError(
            f"no pool image is left for the transfer set: {stats.after_dedup} retrieved, "
            f"{stats.removed_leakage} removed as near-duplicates of validation/test images (cosine >= "
            f"{threshold}), {stats.removed_low_confidence} removed for low teacher confidence. "
            "An encoder whose embeddings are all alike (e.g. untrained) makes everything look like a copy"
        )


def _warn_if_short(stats: TransferSetStats, transfer_budget: int | None) -> None:
    """Warn when the transfer set holds fewer images than ``transfer_budget``, saying why."""
    if transfer_budget is not None and stats.final < transfer_budget:
        logger.warning(
            "the transfer set holds %d images, fewer than transfer_budget=%d: the search found only %d unique "
            "neighbours (k=%d per query) and %d were removed; a larger pool or fewer filters gives more",
            stats.final,
            transfer_budget,
            stats.after_dedup,
            stats.k,
            stats.removed_leakage + stats.removed_low_confidence,
        )


def _with_provenance(pool, candidates, keep: np.ndarray, picked: dict[str, np.ndarray]):
    """The kept pool rows as a Dataset (from the teacher's ``candidates`` when scored) with the ``picked``
    columns added: ``pool_index``, ``query_index``, ``rank`` as int64, the others as float32."""
    if candidates is not None:
        transfer = candidates.select(np.flatnonzero(keep).tolist())
    else:
        transfer = _select_rows(pool, picked["pool_index"])
    for name, values in picked.items():
        dtype = np.int64 if name in ("pool_index", "query_index", "rank") else np.float32
        transfer = transfer.add_column(name, values.astype(dtype).tolist())
    return transfer


def _count_zero_pool_rows(vectors: np.ndarray, rows: np.ndarray, encoder: str) -> int:
    """Count (and report) pool images the encoder maps to the zero vector: they rank last for every query."""
    zero = zero_rows(vectors)
    if zero.size:
        logger.warning(
            "%d of %d pool images (%.1f%%) embed to an all-zero vector with '%s' (first: pool row %d): "
            "they score 0 with every query, so they are retrieved only after every image that scores above "
            "0. An encoder at a resolution far below its training one does this; "
            "a larger input size or another --retrieval_encoder avoids it",
            zero.size,
            len(vectors),
            100 * zero.size / len(vectors),
            encoder,
            int(rows[zero[0]]),
        )
    return int(zero.size)


def _drop_zero_queries(vectors: np.ndarray, rows: np.ndarray, encoder: str):
    """Queries whose embedding is the zero vector have no nearest neighbours (every pool image ties at
    cosine 0): skip them, counted. Returns ``(vectors, rows, skipped)``; raises when none is left."""
    zero = zero_rows(vectors)
    if not zero.size:
        return vectors, rows, 0
    if zero.size == len(vectors):
        raise ValueError(
            f"every query image embeds to an all-zero vector with '{encoder}': nothing can be retrieved "
            "around them; use another --retrieval_encoder (or a larger input size)"
        )
    logger.warning(
        "%d of %d query images embed to an all-zero vector with '%s' and are skipped (first: query row %d)",
        zero.size,
        len(vectors),
        encoder,
        int(rows[zero[0]]),
    )
    keep = np.ones(len(vectors), dtype=bool)
    keep[zero] = False
    return vectors[keep], rows[keep], int(zero.size)


#: Above this share of the retrieved images removed as near-copies, the guard's threshold probably
#: does not suit the encoder (real copies of the held-out images are rarely so many).
GUARD_DOMINATES_SHARE = 0.25


def _warn_if_guard_dominates(stats: TransferSetStats, threshold: float) -> None:
    if stats.after_dedup and stats.removed_leakage > GUARD_DOMINATES_SHARE * stats.after_dedup:
        logger.warning(
            "the leakage guard removed %d of %d retrieved images (%.0f%%) as near-copies of validation/test "
            "images (cosine >= %s with '%s'): far more than copies usually are. This encoder may place "
            "unrelated images that close; look at a few, then raise --leakage_threshold or use a more "
            "discriminative --retrieval_encoder",
            stats.removed_leakage,
            stats.after_dedup,
            100 * stats.removed_leakage / stats.after_dedup,
            threshold,
            stats.encoder,
        )


def _select_rows(pool, rows: np.ndarray):
    """``pool.select(rows)``; a streamed pool is read once more and the chosen rows written to a Dataset."""
    if not is_streamed(pool):
        return pool.select(rows.tolist())
    import datasets

    from ..data.images import undecoded

    order = np.argsort(rows, kind="stable")
    image_column = find_image_column(pool.features or {})
    # read the stream undecoded: the rows passed over include the images the embedding skipped as
    # unreadable, which datasets' own decoder would raise on (and decoding them all is wasted work)
    raw = undecoded(pool, image_column) if image_column else pool

    def chosen(wanted: np.ndarray):
        position = 0
        for row, example in enumerate(raw):
            if position == len(wanted):
                return
            if row == wanted[position]:
                yield example
                position += 1

    wanted = rows[order]
    materialised = datasets.Dataset.from_generator(
        chosen,
        features=raw.features,
        gen_kwargs={"wanted": wanted},
        # a stream has no content fingerprint: a fresh one, so another pool's cached rows are never reused
        fingerprint=uuid.uuid4().hex,
    )
    if image_column and raw is not pool:  # the chosen rows all decoded when embedded: as the pool had them
        materialised = materialised.cast_column(image_column, pool.features[image_column])
    return materialised.select(np.argsort(order, kind="stable").tolist())  # back to the caller's order


def _precomputed(pool_embeddings, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pool_embeddings, tuple):
        vectors, rows = (np.asarray(a) for a in pool_embeddings)
    else:
        vectors, rows = np.asarray(pool_embeddings), np.arange(len(pool_embeddings))
    if len(vectors) != len(rows) or (len(rows) and (rows.min() < 0 or rows.max() >= pool_size)):
        raise ValueError(
            f"precomputed pool embeddings: {len(vectors)} vectors for rows outside [0, {pool_size})"
        )
    vectors = check_embeddings(vectors.astype(np.float32), "precomputed pool embeddings")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # a zero vector stays zero, and is counted
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0), rows.astype(np.int64)
