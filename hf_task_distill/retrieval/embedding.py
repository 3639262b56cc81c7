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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..data.images import load_rgb_image
from ..data.loading import find_image_column
from ..data.views import ViewSpec, eval_view, render_view
from ..devices import process_state

__all__ = ["EmbeddingStore", "ImageEncoder", "embed_pool"]

logger = logging.getLogger(__name__)


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
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, ViewSpec.from_image_processor(processor), name=name_or_path)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        pixel_values = pixel_values.to(device)
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixel_values)
            features = getattr(features, "pooler_output", features)
        else:
            outputs = self.model(pixel_values=pixel_values)
            pooled = getattr(outputs, "pooler_output", None)
            features = pooled if pooled is not None else outputs.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(features.float(), dim=-1)


@dataclass
class EmbeddingStore:
    """The embeddings of a pool on disk: float16 vectors and the pool row each one belongs to."""

    directory: str

    def manifests(self) -> list[dict[str, Any]]:
        if not os.path.isdir(self.directory):
            return []
        names = sorted(
            n for n in os.listdir(self.directory) if n.startswith("shard-") and n.endswith(".json")
        )
        out = []
        for name in names:
            with open(os.path.join(self.directory, name), encoding="utf-8") as f:
                out.append(json.load(f))
        return out

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings ``[M, D]`` float32, pool row indices ``[M]``), in pool order."""
        vectors, rows = [], []
        for manifest in self.manifests():
            path = os.path.join(self.directory, manifest["file"])
            with np.load(path) as shard:
                vectors.append(shard["embeddings"].astype(np.float32))
                rows.append(shard["rows"])
        if not vectors:
            raise ValueError(f"no complete embedding shard in {self.directory}")
        return np.concatenate(vectors), np.concatenate(rows)

    @property
    def skipped(self) -> int:
        return sum(len(m["skipped"]) for m in self.manifests())


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _write_atomically(path: str, write, *args, **kwargs) -> None:
    """``write(tmp, ...)`` then rename over ``path``: readers see the old file or the whole new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp, *args, **kwargs)
    os.replace(tmp, path)


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
    """Embed every row of ``pool`` (a ``datasets.Dataset``) with ``encoder``, resuming finished shards.

    Shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)`` and is done by process
    ``i % num_processes`` (accelerate's process layout by default).
    """
    from tqdm.auto import tqdm

    if len(pool) == 0:
        raise ValueError("the pool is empty: nothing to embed")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    image_column = image_column or find_image_column(pool.features) or "image"
    if image_column not in pool.column_names:
        raise ValueError(
            f"the pool has no image column '{image_column}' (columns: {', '.join(pool.column_names)})"
        )
    if process_index is None or num_processes is None:
        state = process_state()
        process_index, num_processes = state.process_index, state.num_processes
    raw = pool.select_columns([image_column]).cast_column(image_column, _undecoded_image_feature())
    num_shards = (len(pool) + shard_size - 1) // shard_size
    mine = [i for i in range(num_shards) if i % num_processes == process_index]
    todo = [i for i in mine if not os.path.exists(os.path.join(output_dir, _shard_name(i) + ".json"))]
    if len(todo) < len(mine):
        logger.info(
            "Resuming pool embedding: %d of %d shard(s) already complete", len(mine) - len(todo), len(mine)
        )
    bar = tqdm(
        total=sum(min(shard_size, len(pool) - i * shard_size) for i in todo),
        disable=not progress,
        desc="embedding pool",
        unit="img",
    )
    for shard in todo:
        start, stop = shard * shard_size, min(len(pool), (shard + 1) * shard_size)
        vectors, rows, skipped = [], [], []
        for batch_start in range(start, stop, batch_size):
            cells = raw[batch_start : min(stop, batch_start + batch_size)][image_column]
            pixels, batch_rows = [], []
            for offset, cell in enumerate(cells):
                row = batch_start + offset
                try:
                    image = load_rgb_image(cell)
                    tensor = TF.pil_to_tensor(image)
                except (OSError, ValueError, SyntaxError) as err:  # undecodable file: skip and count
                    skipped.append({"row": row, "error": f"{type(err).__name__}: {err}"[:200]})
                    continue
                pixels.append(render_view(tensor, eval_view(image.size, encoder.spec), encoder.spec))
                batch_rows.append(row)
            if pixels:
                vectors.append(encoder(torch.stack(pixels)).cpu().numpy().astype(np.float16))
                rows.extend(batch_rows)
            bar.update(len(cells))
        dim = vectors[0].shape[1] if vectors else 0
        embeddings = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float16)
        data_file = _shard_name(shard) + ".npz"
        _write_atomically(
            os.path.join(output_dir, data_file),
            _save_npz,
            embeddings=embeddings,
            rows=np.asarray(rows, dtype=np.int64),
        )
        manifest = {
            "shard": shard,
            "file": data_file,
            "start": start,
            "stop": stop,
            "count": len(rows),
            "dim": int(dim),
            "skipped": skipped,
            "encoder": encoder.name,
            "process": process_index,
        }
        _write_atomically(
            os.path.join(output_dir, _shard_name(shard) + ".json"),
            _write_json,
            manifest,
        )
        if skipped:
            logger.warning("Pool shard %d: skipped %d unreadable image(s)", shard, len(skipped))
    bar.close()
    return EmbeddingStore(output_dir)


def _undecoded_image_feature():
    import datasets

    return datasets.Image(decode=False)


def _save_npz(path: str, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
