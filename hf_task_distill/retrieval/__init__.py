"""Curate a task-related transfer set by retrieving pool images nearest to the target images."""

from .builder import RetrievalConfig, RetrievalTransferSetBuilder, TransferSetStats
from .curation import leakage_mask, union_of_neighbours
from .embedding import EmbeddingStore, ImageEncoder, TeacherConfidence, embed_pool
from .index_choice import IndexPlan, candidate_plans, choose_index, default_nlist, estimate, format_bytes
from .pool import load_pool
from .search import (
    POOL_BLOCK_ROWS,
    build_index,
    check_embeddings,
    exact_search,
    gpu_available,
    pilot_probe_fraction,
    plan_index,
    recall_at_k,
    require_faiss,
    retrieve,
    search,
    tune_nprobe,
)
from .transfer_set import MAX_SHEET_ROWS, contact_sheet, save_transfer_set

__all__ = [
    "MAX_SHEET_ROWS",
    "POOL_BLOCK_ROWS",
    "EmbeddingStore",
    "ImageEncoder",
    "IndexPlan",
    "RetrievalConfig",
    "RetrievalTransferSetBuilder",
    "TeacherConfidence",
    "TransferSetStats",
    "build_index",
    "candidate_plans",
    "check_embeddings",
    "choose_index",
    "contact_sheet",
    "default_nlist",
    "embed_pool",
    "estimate",
    "exact_search",
    "format_bytes",
    "gpu_available",
    "leakage_mask",
    "load_pool",
    "pilot_probe_fraction",
    "plan_index",
    "recall_at_k",
    "require_faiss",
    "retrieve",
    "save_transfer_set",
    "search",
    "tune_nprobe",
    "union_of_neighbours",
]
