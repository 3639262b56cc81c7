"""Embed an image pool once, in resumable shards, and reuse the embeddings in later runs.

Rows are cut into fixed shards (``shard_size`` rows each). A shard's float16 embeddings and the pool
row of each embedding go to a temporary file that is renamed into place, and its manifest is written
last, the same way: a shard is complete exactly when its manifest exists, so a run killed at any
moment resumes at the first incomplete shard and never reads a partial file. Shards are assigned
round-robin to accelerate processes. Images that cannot be decoded are skipped and counted (a web
pool is never all readable); every other error stops the run.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..data.loading import find_image_column
from ..data.views import ViewSpec, eval_view, render_view
from ..files import read_json, write_atomically, write_json_atomically
from ..inference import ShardedInference, ShardLayout, ShardResult, ShardStorage, is_streamed

__all__ = ["EmbeddingStore", "ImageEncoder", "TeacherConfidence", "embed_pool"]

logger = logging.getLogger(__name__)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class ImageEncoder:
    """A vision model as an L2-normalised image-embedding function, with its own view spec.

    Uses ``get_image_features`` when the model has it (CLIP, SigLIP), else the pooled output, else
    the first token of the last hidden state (DINOv2/ViT CLS).
    """

    def __init__(self, model: torch.nn.Module, spec: ViewSpec, name: str = ""):
        self.model, self.spec = model.eval(), spec
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, trust_remote_code: bool = False, **kwargs: Any
    ) -> ImageEncoder:
        """An encoder from a Hub id or folder (``AutoModel`` with safetensors weights only, and the
        view spec of its image processor); see the class for which features it embeds."""
        from transformers import AutoImageProcessor, AutoModel

        from ..models.safe_loading import safetensors_required
        from ..sources import check_model_source, resolve_model_source

        check_model_source(name_or_path, "retrieval encoder")
        source = resolve_model_source(name_or_path)
        kwargs.setdefault("use_safetensors", True)
        with safetensors_required(name_or_path):
            model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        return cls(model, ViewSpec.from_image_processor(processor), name=name_or_path)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        device = _model_device(self.model)
        pixel_values = pixel_values.to(device)
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixel_values)
            features = getattr(features, "pooler_output", features)
        else:
            outputs = self.model(pixel_values=pixel_values)
            pooled = getattr(outputs, "pooler_output", None)
            features = pooled if pooled is not None else outputs.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(features.float(), dim=-1)


class TeacherConfidence:
    """A finetuned teacher as a one-number "embedding": its top softmax probability for each image.

    Goes through :func:`embed_pool` like an encoder, so scoring retrieved images gets the same
    batching, resumable shards and skip-and-count handling of unreadable files.
    """

    def __init__(self, model: torch.nn.Module, spec: ViewSpec | None = None, name: str = ""):
        self.model = model.eval()
        self.spec = spec or ViewSpec.from_model(model)
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        device = _model_device(self.model)
        logits = self.model(pixel_values=pixel_values.to(device)).logits
        return logits.float().softmax(-1).amax(-1, keepdim=True)


@dataclass
class EmbeddingStore:
    """The embeddings of a pool on disk: float16 vectors and the pool row each one belongs to."""

    directory: str

    def manifests(self) -> list[dict[str, Any]]:
        """Every shard's manifest (``shard-*.json``), in file-name order.

        Raises:
            ValueError: a manifest is unreadable or lacks a field (naming the file to delete).
        """
        if not os.path.isdir(self.directory):
            return []
        names = sorted(
            n for n in os.listdir(self.directory) if n.startswith("shard-") and n.endswith(".json")
        )
        out = []
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    manifest = json.load(f)
            except ValueError:  # written atomically, so this is damage from outside: name the file
                manifest = None
            if not isinstance(manifest, dict) or not _MANIFEST_KEYS <= set(manifest):
                raise ValueError(
                    f"embedding shard manifest {path} is unreadable or incomplete: delete it (and its .npz) "
                    "to embed that shard again"
                )
            out.append(manifest)
        return out

    def load(self, dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings ``[M, D]``, pool row indices ``[M]``), in pool order.

        float16 by default, as stored: the search code converts one block at a time, so a pool of
        10^6 x 384 takes 0.77 GB here instead of 1.5 GB. The array is allocated once and filled.
        """
        everything = self.manifests()
        manifests = [m for m in everything if m["count"]]
        if everything and not manifests:  # say why: "no shard" would send the user looking for files
            skipped = sum(len(m["skipped"]) for m in everything)
            raise ValueError(
                f"none of the {skipped} images embedded in {self.directory} could be decoded "
                "(every one was skipped as unreadable)"
            )
        if not manifests:
            raise ValueError(f"no complete embedding shard in {self.directory}")
        dims = {m["dim"] for m in manifests}
        if len(dims) != 1:
            raise ValueError(f"embedding shards in {self.directory} disagree on dimension: {sorted(dims)}")
        total = sum(m["count"] for m in manifests)
        vectors = np.empty((total, dims.pop()), dtype=dtype)
        rows = np.empty(total, dtype=np.int64)
        filled = 0
        for manifest in manifests:
            path = os.path.join(self.directory, manifest["file"])
            try:  # numpy's errors name no file
                with np.load(path, allow_pickle=False) as shard:
                    count = len(shard["rows"])
                    vectors[filled : filled + count] = shard["embeddings"]
                    rows[filled : filled + count] = shard["rows"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise ValueError(
                    f"embedding shard {path} is missing or unreadable ({type(err).__name__}: {err}); delete it "
                    f"and {_shard_name(manifest['shard'])}.json to embed that shard again"
                ) from err
            filled += count
        return vectors, rows

    @property
    def rows_seen(self) -> int:
        """Pool rows the shards cover (the length of a streamed pool once it has been read)."""
        return max((m["stop"] for m in self.manifests()), default=0)

    @property
    def skipped(self) -> int:
        """Pool rows skipped as unreadable, over every shard."""
        return sum(len(m["skipped"]) for m in self.manifests())


#: Written first in an embedding folder: which dataset its shards embed (``dataset_fingerprint``).
DATASET_FILE = "dataset.json"
_MANIFEST_KEYS = {"shard", "file", "start", "stop", "count", "dim", "skipped", "encoder"}


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass(frozen=True)
class _EvalView:
    """One decoded image -> the encoder's deterministic view, ``[3, H, W]`` (runs in loader workers)."""

    spec: ViewSpec

    def __call__(self, row: int, image) -> torch.Tensor:
        return render_view(TF.pil_to_tensor(image), eval_view(image.size, self.spec), self.spec)


class _Embed:
    """A batch of rendered views -> ``{"embeddings": [B, D]}`` on the CPU."""

    def __init__(self, encoder: ImageEncoder):
        self.encoder = encoder

    def __call__(self, rows: list[int], inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"embeddings": self.encoder(torch.stack(inputs)).cpu()}


class _NpzShards(ShardStorage):
    """``shard-NNNNN.npz`` (float16 embeddings, pool rows) and its manifest ``shard-NNNNN.json``,
    written last: a shard is complete exactly when its manifest exists. A folder holding shards of
    another encoder or shard size is refused, never mixed in."""

    name = "pool embedding"

    def __init__(self, directory: str, encoder_name: str, shard_size: int, process_index: int):
        self.directory, self.encoder_name, self.process_index = directory, encoder_name, process_index
        existing = EmbeddingStore(directory).manifests()
        for manifest in existing:
            if manifest["encoder"] != encoder_name or manifest["start"] != manifest["shard"] * shard_size:
                raise ValueError(
                    f"{directory} holds embeddings from encoder '{manifest['encoder']}' in shards starting at "
                    f"row {manifest['start']}; this run uses '{encoder_name}' with shard_size={shard_size}: "
                    "use another folder or delete it"
                )
        self.done = {m["shard"] for m in existing}

    def is_complete(self, shard: int) -> bool:
        return shard in self.done

    def write(self, result: ShardResult) -> None:
        vectors = result.outputs.get("embeddings")
        embeddings = np.zeros((0, 0), np.float16) if vectors is None else vectors.numpy().astype(np.float16)
        data_file = _shard_name(result.index) + ".npz"
        rows = result.rows.numpy().astype(np.int64)
        write_atomically(os.path.join(self.directory, data_file), _save_npz, embeddings=embeddings, rows=rows)
        manifest = {
            "shard": result.index,
            "file": data_file,
            "start": result.start,
            "stop": result.stop,
            "count": len(rows),
            "dim": int(embeddings.shape[1]),
            "skipped": result.skipped,
            "encoder": self.encoder_name,
            "process": self.process_index,
        }
        path = os.path.join(self.directory, _shard_name(result.index) + ".json")
        write_json_atomically(path, manifest, indent=None)
        self.done.add(result.index)


def _claim_folder_for(pool, image_column: str, output_dir: str) -> None:
    """Refuse a folder whose shards embed another dataset (same encoder and shard size would
    otherwise pass: different query images in a reused folder were read as the old ones)."""
    from ..data.fingerprints import dataset_fingerprint

    path = os.path.join(output_dir, DATASET_FILE)
    fingerprint = dataset_fingerprint(pool, image_column)
    recorded = read_json(path).get("dataset")
    if recorded is None and EmbeddingStore(output_dir).manifests():
        raise ValueError(
            f"{output_dir} holds embedding shards that do not say which dataset they embed: "
            "use another folder or delete it"
        )
    if recorded is not None and recorded != fingerprint:
        raise ValueError(
            f"{output_dir} holds embeddings of another dataset (fingerprint {recorded}, this one "
            f"{fingerprint}): use another folder or delete it"
        )
    if recorded is None:
        write_json_atomically(path, {"dataset": fingerprint, "rows": len(pool)})


def embed_pool(
    pool,
    encoder: ImageEncoder,
    output_dir: str | os.PathLike,
    *,
    image_column: str | None = None,
    shard_size: int = 4096,
    batch_size: int = 64,
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = True,
) -> EmbeddingStore:
    """Embed every row of ``pool`` with ``encoder``, resuming finished shards.

    ``pool`` is a ``datasets.Dataset`` or a streaming ``datasets.IterableDataset`` (see
    :func:`~hf_task_distill.retrieval.load_pool` for folders, parquet and webdataset shards). Shard
    ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)`` in pool order and is done by process
    ``i % num_processes`` (accelerate's process layout by default). A streamed pool is read by
    every process, which decodes only the rows of its own unfinished shards. The pass itself is
    :class:`~hf_task_distill.inference.ShardedInference`; this function does not wait for the other
    processes.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    features = pool.features
    image_column = image_column or (find_image_column(features) if features else None) or "image"
    if pool.column_names is not None and image_column not in pool.column_names:
        raise ValueError(
            f"the pool has no image column '{image_column}' (columns: {', '.join(pool.column_names)})"
        )
    layout = ShardLayout.for_processes(shard_size, process_index, num_processes)
    streamed = is_streamed(pool)
    if not streamed:
        _claim_folder_for(pool, image_column, output_dir)
    storage = _NpzShards(output_dir, encoder.name, shard_size, layout.process_index)
    if not streamed and len(pool) == 0:
        raise ValueError("the pool is empty: nothing to embed")
    inference = ShardedInference(
        prepare=_EvalView(encoder.spec),
        compute=_Embed(encoder),
        storage=storage,
        layout=layout,
        batch_size=batch_size,
        description="embedding pool",
    )
    if inference.run(pool, image_column, progress=progress) == 0:
        raise ValueError("the pool is empty: nothing to embed")
    return EmbeddingStore(output_dir)


def _save_npz(path: str, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
