"""Teacher-output cache: run the teacher once on K views of every transfer image, then distil from disk.

With the teacher online, a distillation epoch costs a teacher forward plus a student step per image,
and the teacher (a ViT-L: ~60 GFLOPs) dwarfs the student (~1-2 GFLOPs). The cache pays the teacher
once per *view*: for each transfer image it draws ``num_views`` random-resized-crop/flip views
(:class:`~hf_task_distill.data.ViewParams`, from a generator seeded by ``(seed, row)``), stores the
teacher's logits with the view parameters, and training replays exactly those views to the student.
The student's target therefore always belongs to the view it sees (consistent teaching), which a
cache of one prediction per image would break.

Layout of a cache folder::

    build.json                  what is being built (fingerprint), written first
    shard-00000.safetensors     rows [0, shard_size): logits, view boxes, flips, row ids
    ...
    cache.json                  written last, once every shard exists: the cache is complete

Each shard is written to a temporary name and renamed into place, and carries the cache fingerprint
in its header, so a build killed at any moment resumes at the missing shards and never reads a
partial or foreign file. Shards are split round-robin across accelerate processes. The fingerprint
covers the teacher's weights, the transfer set, the teacher's view spec, the augmentation, the view
count, the storage (top-k) and the seed: a cache is refused, with what differs, wherever any of them
does not match.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from .checks import check_choice, check_int
from .data.fingerprints import dataset_fingerprint, fingerprint_hash
from .data.images import load_rgb_image, undecoded
from .data.loading import find_image_column, find_label_column
from .data.validation import check_dataset_type
from .data.views import (
    ViewAugmentation,
    ViewParams,
    ViewSpec,
    derived_seed,
    label_or_unlabelled,
    map_label,
    render_view,
    sample_view,
    seeded_generator,
)
from .devices import process_state
from .files import read_json, write_atomically, write_json_atomically
from .inference import ShardedInference, ShardLayout, ShardResult, ShardStorage, finish_on_main_process

__all__ = [
    "CachedTeacherDataset",
    "TeacherCache",
    "TeacherCacheConfig",
    "TeacherCacheMismatch",
    "build_teacher_cache",
    "dataset_fingerprint",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUILD_FILE, COMPLETE_FILE = "build.json", "cache.json"
_OPEN_SHARDS = 64


class TeacherCacheMismatch(ValueError):
    """A cache was built for another teacher, transfer set, view spec or view count."""


@dataclass(frozen=True)
class TeacherCacheConfig:
    """How the cache is built. Everything here is part of the cache's fingerprint except the last three."""

    num_views: int = field(
        default=4,
        metadata={
            "help": "Augmented views stored per image. Each epoch replays one of them, so epochs beyond "
            "num_views repeat views; the teacher runs num_views times per image in total."
        },
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "Store only the k largest logits per view plus the remaining probability mass "
            "(spread evenly over the other classes when read back). None: every logit, float16."
        },
    )
    view_seed: int = field(default=0, metadata={"help": "Seed of the cached views' crop boxes and flips."})
    shard_size: int = field(default=1024, metadata={"help": "Images per shard (the unit of resuming)."})
    batch_size: int = field(default=64, metadata={"help": "Views per teacher forward pass."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding and rendering views."})
    precision: str = field(
        default="auto",
        metadata={"help": "'auto' (bf16/fp16 autocast on CUDA, fp32 elsewhere), 'fp32', 'bf16' or 'fp16'."},
    )

    def __post_init__(self):
        checked = {
            "num_views": check_int(self.num_views, "num_views", minimum=1),
            "top_k": check_int(self.top_k, "top_k", minimum=1, optional=True),
            "view_seed": check_int(self.view_seed, "view_seed"),
            "shard_size": check_int(self.shard_size, "shard_size", minimum=1),
            "batch_size": check_int(self.batch_size, "batch_size", minimum=1),
            "num_workers": check_int(self.num_workers, "num_workers", minimum=0),
        }
        for name, value in checked.items():  # frozen: an integral float (from a JSON file) becomes an int
            object.__setattr__(self, name, value)
        check_choice(self.precision, "precision", ("auto", "fp32", "bf16", "fp16"))


# ---- fingerprints ---------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's class, parameter/buffer names, dtypes, shapes and bytes (16 hex digits).

    Hashing every weight costs about a second for a ViT-L and is the only check that catches a
    teacher finetuned differently under the same name.
    """
    return fingerprint_hash(type(model).__name__, _weight_parts(model))


def _weight_parts(model: torch.nn.Module):
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        yield f"{name}|{tensor.dtype}|{tuple(tensor.shape)}"
        yield tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()


def _describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    names = {
        "teacher": "teacher weights",
        "dataset": "transfer set",
        "num_views": "view count",
        "teacher_view": "teacher view spec",
        "augmentation": "augmentation",
        "top_k": "top-k storage",
        "seed": "view seed",
        "shard_size": "shard size",
        "num_labels": "number of labels",
        "format": "cache format",
    }
    diffs = [
        f"{names.get(key, key)}: cache has {found.get(key)!r}, expected {expected.get(key)!r}"
        for key in names
        if key in expected and found.get(key) != expected.get(key)
    ]
    return "; ".join(diffs) or "fingerprints differ"


# ---- the cache on disk ----------------------------------------------------------------------------
def _shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def sample_views(
    image_size: tuple[int, int], augmentation: ViewAugmentation, num_views: int, seed: int, row: int
):
    """The ``num_views`` views of image ``row``: a function of ``(seed, row)`` only, so any process,
    shard layout or resumed run draws the same ones."""
    generator = seeded_generator(seed, int(row))
    return [sample_view(image_size, augmentation, generator) for _ in range(num_views)]


class TeacherCache:
    """A complete teacher-output cache: lookup of ``(row, view) -> (teacher logits, view params)``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        info = read_json(os.path.join(self.directory, COMPLETE_FILE))
        if not info and os.path.exists(os.path.join(self.directory, COMPLETE_FILE)):
            # not "stopped before the end": the shards may be fine, only the index is damaged
            raise ValueError(
                f"{os.path.join(self.directory, COMPLETE_FILE)} is unreadable (not a JSON object): run "
                "build_teacher_cache again to rewrite it from the finished shards"
            )
        if not info:
            started = os.path.exists(os.path.join(self.directory, BUILD_FILE))
            raise FileNotFoundError(
                f"{self.directory} is not a complete teacher cache"
                + (
                    ": its build stopped before the end; run build_teacher_cache again to resume it"
                    if started
                    else f" (no {COMPLETE_FILE})"
                )
            )
        if info.get("format") != FORMAT_VERSION:
            raise TeacherCacheMismatch(
                f"{self.directory} uses cache format {info.get('format')}, this version reads {FORMAT_VERSION}"
            )
        self.info = info
        self.fingerprint: dict[str, Any] = info["fingerprint"]
        self.num_views = int(self.fingerprint["num_views"])
        self.num_labels = int(self.fingerprint["num_labels"])
        self.top_k = self.fingerprint["top_k"]
        self.teacher_view = ViewSpec(**_tuples(self.fingerprint["teacher_view"]))
        self.augmentation = ViewAugmentation(**_tuples(self.fingerprint["augmentation"]))
        self.id2label = {int(k): v for k, v in info.get("id2label", {}).items()}
        self.skipped: list[dict[str, Any]] = info.get("skipped", [])
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        rows, shards, offsets = [], [], []
        expected = fingerprint_hash(self.fingerprint)
        for shard in range(int(info["num_shards"])):
            shard_rows = self._checked_shard_rows(shard, expected)
            rows.append(shard_rows)
            shards.append(np.full(len(shard_rows), shard, dtype=np.int32))
            offsets.append(np.arange(len(shard_rows), dtype=np.int32))
        self.rows = np.concatenate(rows)  # transfer-set rows that have targets, ascending
        self._shards, self._offsets = np.concatenate(shards), np.concatenate(offsets)
        self._handles = {}  # opened again lazily, in whichever process reads

    def _checked_shard_rows(self, shard: int, expected_hash: str) -> np.ndarray:
        """The row ids of a shard, refusing one that is missing, unreadable or from another cache
        (a shard replaced after the build would otherwise give silently wrong targets)."""
        from safetensors import SafetensorError

        path = os.path.join(self.directory, _shard_file(shard))
        redo = f"delete {os.path.join(self.directory, COMPLETE_FILE)} and run build_teacher_cache again to rebuild it"
        try:
            handle = self._open(shard)
            metadata = json.loads((handle.metadata() or {}).get("hf_task_distill", "{}"))
            shard_rows = handle.get_tensor("rows").numpy()
        except (SafetensorError, OSError, ValueError) as err:
            detail = f"{type(err).__name__}: {err}"[:200]
            raise ValueError(
                f"teacher cache shard {path} is missing or unreadable ({detail}); {redo}"
            ) from err
        if metadata.get("fingerprint") != expected_hash:
            raise TeacherCacheMismatch(
                f"teacher cache shard {path} belongs to another cache (fingerprint {metadata.get('fingerprint')!r}, "
                f"expected {expected_hash!r}); {redo}"
            )
        return shard_rows

    @property
    def image_column(self) -> str:
        """The transfer set's image column the cache was built from."""
        return self.info["image_column"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):  # open file handles stay in the process that opened them
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _open(self, shard: int):
        from safetensors import safe_open

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            if len(self._handles) >= _OPEN_SHARDS:  # bounded: a big cache has more shards than file handles
                self._handles.pop(next(iter(self._handles)))
            handle = safe_open(os.path.join(self.directory, _shard_file(shard)), framework="pt")
            self._handles[shard] = handle
        return handle

    def view(self, row: int, view: int) -> ViewParams:
        """The crop box and flip of view ``view`` of image ``row``, as stored (the student's view is rendered from them)."""
        shard, offset = self._locate(row)
        handle = self._open(shard)
        box = handle.get_slice("boxes")[offset : offset + 1, view][0].tolist()
        flip = bool(handle.get_slice("flips")[offset : offset + 1, view][0])
        return ViewParams(*box, flip=flip)

    def logits(self, row: int, view: int) -> torch.Tensor:
        """The teacher's logits for view ``view`` of image ``row`` (float32 ``[num_labels]``).

        With top-k storage the k stored logits are exact and the remaining probability mass is
        spread evenly over the other classes (so softmax at T=1 reproduces the stored top-k
        probabilities and the total mass).
        """
        shard, offset = self._locate(row)
        handle = self._open(shard)
        if self.top_k is None:
            return handle.get_slice("logits")[offset : offset + 1, view][0].float()
        values = handle.get_slice("topk_logits")[offset : offset + 1, view][0].float()
        indices = handle.get_slice("topk_indices")[offset : offset + 1, view][0].long()
        lse = handle.get_slice("logsumexp")[offset : offset + 1, view][0].float()
        return _dense_from_top_k(values, indices, lse, self.num_labels)

    def _locate(self, row: int) -> tuple[int, int]:
        position = int(np.searchsorted(self.rows, row))
        if position >= len(self.rows) or self.rows[position] != row:
            raise KeyError(f"row {row} has no cached teacher output (skipped or outside the transfer set)")
        return int(self._shards[position]), int(self._offsets[position])

    def view_for_epoch(self, row: int, epoch: int) -> int:
        """Which stored view image ``row`` replays in ``epoch``: every view once per ``num_views``
        epochs, starting at a per-row offset so one epoch mixes all view indices."""
        return (derived_seed(self.fingerprint["seed"], int(row)) + int(epoch)) % self.num_views

    def check(
        self,
        *,
        dataset=None,
        teacher: torch.nn.Module | None = None,
        num_views: int | None = None,
        num_labels: int | None = None,
        teacher_view: ViewSpec | None = None,
        where: str = "the transfer set",
    ) -> None:
        """Refuse (:class:`TeacherCacheMismatch`) a cache that does not belong to these inputs."""
        expected: dict[str, Any] = {}
        if dataset is not None:
            expected["dataset"] = dataset_fingerprint(dataset, self.image_column)
        if teacher is not None:
            expected["teacher"] = model_fingerprint(teacher)
        if num_views is not None:
            expected["num_views"] = int(num_views)
        if num_labels is not None:
            expected["num_labels"] = int(num_labels)
        if teacher_view is not None:
            expected["teacher_view"] = _jsonable(asdict(teacher_view))
        found = {k: self.fingerprint.get(k) for k in expected}
        if found != expected:
            raise TeacherCacheMismatch(
                f"the teacher cache in {self.directory} was built for other inputs than {where}: "
                f"{_describe_mismatch(expected, found)}. Rebuild it (build_teacher_cache into a new folder)"
            )


def _dense_from_top_k(values, indices, lse, num_classes: int) -> torch.Tensor:
    k = values.shape[-1]
    if k >= num_classes:
        return torch.empty(num_classes).scatter_(0, indices, values)
    kept = torch.exp(values - lse).sum().clamp(max=1.0)
    remainder = torch.clamp(1.0 - kept, min=1e-12)
    fill = lse + torch.log(remainder / (num_classes - k))
    return torch.full((num_classes,), float(fill)).scatter_(0, indices, values)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ---- building -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TeacherViews:
    """One decoded transfer image -> the teacher's rendering of its K views, with their parameters
    (runs in DataLoader workers: holds no model)."""

    spec: ViewSpec
    augmentation: ViewAugmentation
    num_views: int
    seed: int

    def __call__(self, row: int, image) -> dict[str, torch.Tensor]:
        pixels = TF.pil_to_tensor(image)
        views = sample_views(image.size, self.augmentation, self.num_views, self.seed, row)
        return {
            "pixels": torch.stack([render_view(pixels, v, self.spec) for v in views]),
            "boxes": torch.tensor([[v.top, v.left, v.height, v.width] for v in views], dtype=torch.int32),
            "flips": torch.tensor([v.flip for v in views], dtype=torch.uint8),
        }


class _TeacherForward:
    """A batch of images' K views -> the teacher's float32 logits ``[B, K, num_labels]`` on the CPU."""

    def __init__(self, teacher: torch.nn.Module, num_views: int, precision: str):
        self.teacher, self.num_views, self.precision = teacher.eval(), num_views, precision
        self.device = next(teacher.parameters()).device

    def __call__(self, rows: list[int], inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = torch.cat([item["pixels"] for item in inputs]).to(self.device, non_blocking=True)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            logits = self.teacher(pixel_values=pixels.to(next(self.teacher.parameters()).dtype)).logits
        logits = logits.float().reshape(len(rows), self.num_views, -1).cpu()
        if not torch.isfinite(logits).all():
            bad = [rows[i] for i in range(len(rows)) if not torch.isfinite(logits[i]).all()]
            raise FloatingPointError(f"the teacher produced non-finite logits for transfer rows {bad[:10]}")
        return {
            "logits": logits,
            "boxes": torch.stack([item["boxes"] for item in inputs]),
            "flips": torch.stack([item["flips"] for item in inputs]),
        }


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _save_shard(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _shard_is_complete(path: str, fingerprint_hash: str) -> bool:
    if not os.path.exists(path):
        return False
    try:
        return _shard_metadata(path).get("fingerprint") == fingerprint_hash
    except Exception:  # unreadable: rebuilt
        return False


def _shard_metadata(path: str) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get("hf_task_distill", "{}"))


class _SafetensorsShards(ShardStorage):
    """``shard-NNNNN.safetensors`` files, each carrying the cache's fingerprint hash in its header:
    a missing, unreadable or foreign shard is not complete (it is computed again)."""

    name = "teacher cache"

    def __init__(self, directory: str, fingerprint_hash: str, config: TeacherCacheConfig, num_labels: int):
        self.directory, self.fingerprint_hash = directory, fingerprint_hash
        self.config, self.num_labels = config, num_labels

    def is_complete(self, shard: int) -> bool:
        return _shard_is_complete(os.path.join(self.directory, _shard_file(shard)), self.fingerprint_hash)

    def write(self, result: ShardResult) -> None:
        # one metadata entry: safetensors writes several in a process-dependent order, and identical
        # inputs must give byte-identical shards
        header = {"fingerprint": self.fingerprint_hash, "shard": result.index, "start": result.start}
        header.update(stop=result.stop, skipped=result.skipped)
        metadata = {"hf_task_distill": json.dumps(header, sort_keys=True)}
        tensors = _shard_tensors(result, self.config, self.num_labels)
        write_atomically(
            os.path.join(self.directory, _shard_file(result.index)), _save_shard, tensors, metadata
        )


def _shard_tensors(
    result: ShardResult, config: TeacherCacheConfig, num_labels: int
) -> dict[str, torch.Tensor]:
    k, outputs = config.num_views, result.outputs
    if outputs:
        boxes, flips, logits = outputs["boxes"], outputs["flips"], outputs["logits"]
    else:  # no readable image in the shard
        boxes, flips = torch.zeros(0, k, 4, dtype=torch.int32), torch.zeros(0, k, dtype=torch.uint8)
        logits = torch.zeros(0, k, num_labels)
    tensors = {"rows": result.rows, "boxes": boxes, "flips": flips}
    if config.top_k is None:
        tensors["logits"] = logits.to(torch.float16)
    else:
        values, indices = logits.topk(config.top_k, dim=-1)
        tensors["topk_logits"] = values.to(torch.float16)
        tensors["topk_indices"] = indices.to(torch.int32)
        # the mass of the stored logits is computed from their float16 values, as they are read back
        tensors["logsumexp"] = torch.logsumexp(logits, dim=-1)
    return {name: t.contiguous() for name, t in tensors.items()}


def _checked_transfer_set(dataset, image_column: str | None) -> str:
    """The image column of a usable transfer set."""
    check_dataset_type(dataset, "the transfer set of a teacher cache")
    if len(dataset) == 0:
        raise ValueError("the transfer set is empty: nothing to cache")
    image_column = image_column or find_image_column(dataset.features) or "image"
    if image_column not in dataset.column_names:
        raise ValueError(
            f"the transfer set has no image column '{image_column}' (columns: {', '.join(dataset.column_names)})"
        )
    return image_column


def _cache_fingerprint(teacher, dataset, image_column, config, teacher_view, augmentation) -> dict[str, Any]:
    """Everything a cache's validity depends on (hashed into every shard's header)."""
    num_labels = int(teacher.config.num_labels)
    if config.top_k is not None and config.top_k > num_labels:
        raise ValueError(f"top_k={config.top_k} exceeds the teacher's {num_labels} labels")
    return {
        "format": FORMAT_VERSION,
        "teacher": model_fingerprint(teacher),
        "dataset": dataset_fingerprint(dataset, image_column),
        "num_views": config.num_views,
        "top_k": config.top_k,
        "seed": config.view_seed,
        "shard_size": config.shard_size,
        "num_labels": num_labels,
        "teacher_view": _jsonable(asdict(teacher_view)),
        "augmentation": _jsonable(asdict(augmentation)),
    }


def _claim_folder(output_dir: str, fingerprint: dict[str, Any], is_main_process: bool) -> None:
    """Refuse a folder holding a cache (finished or not) for other inputs; record ours first."""
    os.makedirs(output_dir, exist_ok=True)
    for name in (COMPLETE_FILE, BUILD_FILE):
        previous = read_json(os.path.join(output_dir, name)).get("fingerprint")
        if previous is not None and previous != fingerprint:
            raise TeacherCacheMismatch(
                f"{output_dir} holds a teacher cache built for other inputs ({_describe_mismatch(fingerprint, previous)}): "
                "use another folder or delete it"
            )
    if is_main_process and not os.path.exists(os.path.join(output_dir, BUILD_FILE)):
        write_json_atomically(os.path.join(output_dir, BUILD_FILE), {"fingerprint": fingerprint})


def build_teacher_cache(
    teacher: torch.nn.Module,
    dataset,
    output_dir: str | os.PathLike,
    *,
    config: TeacherCacheConfig | None = None,
    teacher_view: ViewSpec | None = None,
    augmentation: ViewAugmentation | None = None,
    image_column: str | None = None,
    progress: bool = True,
) -> TeacherCache:
    """Run ``teacher`` on ``config.num_views`` augmented views of every image of ``dataset``; resumable.

    ``dataset`` is the transfer set (a ``datasets.Dataset`` with an image column); ``teacher_view``
    defaults to the teacher's own preprocessing and ``augmentation`` to :class:`ViewAugmentation`'s
    defaults. Finished shards in ``output_dir`` are kept; a folder built for other inputs is refused.
    Under ``accelerate launch`` the shards are split across processes and every process returns the
    complete cache. The pass itself is :class:`~hf_task_distill.inference.ShardedInference`.
    """
    config = config or TeacherCacheConfig()
    output_dir = os.fspath(output_dir)
    image_column = _checked_transfer_set(dataset, image_column)
    teacher_view = teacher_view or ViewSpec.from_model(teacher)
    augmentation = augmentation or ViewAugmentation()
    fingerprint = _cache_fingerprint(teacher, dataset, image_column, config, teacher_view, augmentation)
    state = process_state()
    _claim_folder(output_dir, fingerprint, state.is_main_process)
    if read_json(os.path.join(output_dir, COMPLETE_FILE)):  # an unreadable cache.json is rewritten below
        return TeacherCache(output_dir)
    num_views = config.num_views
    storage = _SafetensorsShards(output_dir, fingerprint_hash(fingerprint), config, fingerprint["num_labels"])
    inference = ShardedInference(
        prepare=_TeacherViews(teacher_view, augmentation, num_views, config.view_seed),
        compute=_TeacherForward(teacher, num_views, config.precision),
        storage=storage,
        layout=ShardLayout(config.shard_size, state.process_index, state.num_processes),
        batch_size=max(1, config.batch_size // num_views),  # images per forward
        num_workers=config.num_workers,
        description="caching teacher outputs",
        unit="view",
        units_per_row=num_views,
    )
    inference.run(dataset, image_column, progress=progress and state.is_local_main_process)
    num_shards = inference.layout.num_shards(len(dataset))
    finish_on_main_process(lambda: _finish(storage, fingerprint, num_shards, image_column, teacher))
    return TeacherCache(output_dir)


def _finish(storage: _SafetensorsShards, fingerprint, num_shards, image_column, teacher) -> None:
    """Check every shard, index them and write ``cache.json`` last."""
    from safetensors import safe_open

    output_dir, rows, skipped = storage.directory, 0, []
    for shard in range(num_shards):
        path = os.path.join(output_dir, _shard_file(shard))
        if not storage.is_complete(shard):
            raise RuntimeError(f"teacher cache shard {shard} is missing from {output_dir} after the build")
        with safe_open(path, framework="pt") as f:
            rows += f.get_slice("rows").get_shape()[0]
        skipped.extend(_shard_metadata(path)["skipped"])
    if rows == 0:
        raise ValueError(
            f"none of the {len(skipped)} transfer images could be decoded: the teacher cache is empty"
        )
    id2label = getattr(teacher.config, "id2label", None) or {}
    info = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "image_column": image_column,
        "num_shards": num_shards,
        "rows": rows,
        "skipped": skipped,
        "id2label": {str(k): v for k, v in id2label.items()},
    }
    write_json_atomically(os.path.join(output_dir, COMPLETE_FILE), info)


# ---- training on the cache ------------------------------------------------------------------------
class CachedTeacherDataset(torch.utils.data.Dataset):
    """The transfer set as training rows: the student's rendering of a cached view, its teacher logits.

    Epoch ``e`` replays view :meth:`TeacherCache.view_for_epoch` of each image (the Trainer calls
    :meth:`set_epoch` through accelerate's data loader). Rows the cache skipped as unreadable are
    left out. ``labels`` is ``-100`` for unlabelled rows, as everywhere else.
    """

    def __init__(
        self,
        dataset,
        cache: TeacherCache,
        student_view: ViewSpec,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        label_map: list[int] | None = None,
    ):
        self.cache, self.student_view = cache, student_view
        self.image_column = image_column or cache.image_column
        self.label_column = label_column or find_label_column(dataset.features)
        self.label_map = label_map
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        # read undecoded and decode through the package's one policy (see data.images.undecoded)
        self.dataset = undecoded(dataset.with_format(None).select_columns(columns), self.image_column)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Replay each row's cached view for ``epoch`` (the trainers call it at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.cache.rows[i])
        view_index = self.cache.view_for_epoch(row, self.epoch)
        example = self.dataset[row]
        pixels = TF.pil_to_tensor(load_rgb_image(example[self.image_column]))
        item = {
            "pixel_values": render_view(pixels, self.cache.view(row, view_index), self.student_view),
            "teacher_logits": self.cache.logits(row, view_index),
        }
        if self.label_column:
            item["labels"] = map_label(label_or_unlabelled(example[self.label_column]), self.label_map)
        return item
