"""Curate a task-related transfer set by retrieving pool images nearest to the target images."""

from .builder import RetrievalConfig, RetrievalTransferSetBuilder, TransferSetStats
from .curation import leakage_mask, union_of_neighbours
from .embedding import EmbeddingStore, ImageEncoder, embed_pool
from .index_choice import IndexPlan, candidate_plans, choose_index, default_nlist, estimate
from .search import build_index, check_embeddings, exact_search, recall_at_k, search, tune_nprobe

__all__ = [
    "EmbeddingStore",
    "ImageEncoder",
    "IndexPlan",
    "RetrievalConfig",
    "RetrievalTransferSetBuilder",
    "TransferSetStats",
    "build_index",
    "candidate_plans",
    "check_embeddings",
    "choose_index",
    "default_nlist",
    "embed_pool",
    "estimate",
    "exact_search",
    "leakage_mask",
    "recall_at_k",
    "search",
    "tune_nprobe",
    "union_of_neighbours",
]
