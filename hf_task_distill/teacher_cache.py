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

A cache published with its transfer set (a *reinforced* transfer set,
:mod:`hf_task_distill.hub.reinforced`) carries in ``cache.json`` a ``published`` record: a digest
of every published row's image bytes in order (the fingerprint samples 64 rows), and the teacher's
name, licence and FLOPs. :meth:`TeacherCache.from_hub` downloads and checks one by repo id.

Two layouts, chosen by the task type the cache is built for (recorded in its fingerprint; a cache
without one is image classification, as every cache before segmentation was):

* ``image-classification``: the teacher's logits ``[num_labels]`` per view.
* ``image-segmentation`` (dense): the teacher's logits ``[num_labels, h, w]`` per view, resized to a
  grid whose longer side is ``TeacherCacheConfig.dense_grid`` cells (area interpolation, i.e. each
  stored cell is the mean of the teacher's logits over it, which does not alias as point-sampling
  bilinear would; a teacher grid already that small is kept as is). Training reads ``[C, h, w]``
  float32 back and the loss resizes it to the student's output grid.

Storage per image, with ``V`` views, ``C`` classes and a stored grid of ``G = h*w`` cells
(``G = 1`` for classification), in bytes (:func:`teacher_cache_bytes_per_image`)::

    8 (row id) + V * (17 (crop box, flip) + G * S)
    S = 2*C                      float16 logits of every class
    S = 2*k + b*k + 4            top-k: float16 logits, indices of b bytes (classification: 4;
                                 dense: 1 when C <= 256, 2 when C <= 32768, else 4), float32 logsumexp

For the paper's ADE20K transfer (~150k images, 150 classes, 4 views, grid 32x32): every logit in
float16 takes 1,228,876 bytes per image, 184.3 GB in all; top-5 takes 77,900 bytes per image,
11.7 GB in all.
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
    render_view,
    sample_view,
    seeded_generator,
)
from .devices import process_state
from .files import display_path, read_json, write_atomically, write_json_atomically
from .inference import ShardedInference, ShardLayout, ShardResult, ShardStorage, finish_on_main_process
from .tasks import get_task_type, task_type_of

__all__ = [
    "CachedTeacherDataset",
    "TeacherCache",
    "TeacherCacheConfig",
    "TeacherCacheMismatch",
    "build_teacher_cache",
    "dataset_fingerprint",
    "model_fingerprint",
    "stored_grid",
    "teacher_cache_bytes_per_image",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUILD_FILE, COMPLETE_FILE = "build.json", "cache.json"
_OPEN_SHARDS = 64
CLASSIFICATION = "image-classification"
#: the layout of each task type's teacher logits: one vector per view, or a dense ``[C, h, w]`` map
_LAYOUTS = {CLASSIFICATION: "vector", "image-segmentation": "dense"}


class TeacherCacheMismatch(ValueError):
    """A cache was built for another teacher, transfer set, task type, view spec or view count."""


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
    dense_grid: int | None = field(
        default=32,
        metadata={
            "help": "Dense (segmentation) teachers only: the longer side, in cells, of the grid their "
            "[C, h, w] logits are stored at (area interpolation; a smaller teacher grid is kept). "
            "None: the teacher's own grid."
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
            "dense_grid": check_int(self.dense_grid, "dense_grid", minimum=1, optional=True),
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
        "task_type": "task type",
        "dense_grid": "dense grid",
        "format": "cache format",
    }
    expected, found = _with_task_type(expected), _with_task_type(found)
    diffs = [
        f"{names.get(key, key)}: cache has {found.get(key)!r}, expected {expected.get(key)!r}"
        for key in names
        if key in expected and found.get(key) != expected.get(key)
    ]
    return "; ".join(diffs) or "fingerprints differ"


def _with_task_type(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint with its task type spelled out (a classification cache's fingerprint omits it, so
    that caches built before segmentation keep their fingerprint)."""
    return {"task_type": CLASSIFICATION, **fingerprint} if "format" in fingerprint else fingerprint


def teacher_cache_bytes_per_image(
    num_views: int, num_labels: int, *, grid: tuple[int, int] | None = None, top_k: int | None = None
) -> int:
    """Bytes of tensor data one image takes in a teacher cache (shard headers aside).

    Args:
        num_views: the views stored per image (``TeacherCacheConfig.num_views``).
        num_labels: the teacher's class count ``C``.
        grid (`tuple[int, int]`, *optional*): the stored ``(h, w)`` grid of a dense cache; ``None``
            for image classification (one logit vector per view).
        top_k (`int`, *optional*): the classes kept per view (classification) or per cell (dense).

    Returns:
        ``8 + V * (17 + G * S)`` with ``G`` the grid's cells (1 without a grid) and ``S`` the bytes per
        cell: ``2 * C`` (float16), or ``2k + b k + 4`` with top-k (float16 logits, ``b``-byte indices,
        float32 logsumexp).
    """
    cells = 1 if grid is None else int(grid[0]) * int(grid[1])
    if top_k is None:
        per_cell = 2 * num_labels
    else:
        per_cell = 2 * top_k + _index_dtype(num_labels, dense=grid is not None).itemsize * top_k + 4
    return 8 + num_views * (4 * 4 + 1 + cells * per_cell)


def _index_dtype(num_labels: int, *, dense: bool) -> torch.dtype:
    """The dtype of stored top-k class indices: int32 for classification (as caches always had), the
    smallest that holds ``num_labels - 1`` for dense caches, whose indices are most of their size."""
    if not dense:
        return torch.int32
    return torch.uint8 if num_labels <= 256 else torch.int16 if num_labels <= 32768 else torch.int32


def stored_grid(height: int, width: int, dense_grid: int | None) -> tuple[int, int]:
    """The ``(h, w)`` grid a dense teacher output of ``height x width`` cells is stored at: its longer
    side scaled to ``dense_grid`` cells (the aspect ratio kept, each side at least 1); an output already
    no larger, or ``dense_grid=None``, is kept."""
    longer = max(height, width)
    if dense_grid is None or longer <= dense_grid:
        return int(height), int(width)
    scale = dense_grid / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


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
                f"{display_path(self.directory)} is not a complete teacher cache"
                + (
                    ": its build stopped before the end; run build_teacher_cache again to resume it"
                    if started
                    else f" (no {COMPLETE_FILE})"
                )
            )
        if info.get("format") != FORMAT_VERSION:
            raise TeacherCacheMismatch(
                f"{display_path(self.directory)} uses cache format {info.get('format')}, this version reads {FORMAT_VERSION}"
            )
        self.info = info
        self.fingerprint: dict[str, Any] = info["fingerprint"]
        self.num_views = int(self.fingerprint["num_views"])
        self.num_labels = int(self.fingerprint["num_labels"])
        self.top_k = self.fingerprint["top_k"]
        self.task_type: str = self.fingerprint.get("task_type", CLASSIFICATION)
        self.dense = _LAYOUTS.get(self.task_type) == "dense"
        grid = info.get("grid")
        self.grid: tuple[int, int] | None = tuple(grid) if grid is not None else None
        self.teacher_view = ViewSpec(**_tuples(self.fingerprint["teacher_view"]))
        self.augmentation = ViewAugmentation(**_tuples(self.fingerprint["augmentation"]))
        self.id2label = {int(k): v for k, v in info.get("id2label", {}).items()}
        self.skipped: list[dict[str, Any]] = info.get("skipped", [])
        #: a published cache's record (hf_task_distill.hub.reinforced): the rows' digest, the teacher
        self.published: dict[str, Any] | None = info.get("published")
        #: ``(repo_id, commit)`` of a cache pulled from the Hub (:meth:`from_hub`)
        self.hub_source: tuple[str, str | None] | None = None
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

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        revision: str | None = None,
        *,
        num_views: int | None = None,
        num_labels: int | None = None,
        label_names: list[str] | None = None,
    ) -> TeacherCache:
        """The teacher cache published with the transfer set in the dataset repo ``repo_id``
        (:func:`~hf_task_distill.hub.reinforced.pull_teacher_cache`): downloaded, its shards checked,
        and refused (:class:`TeacherCacheMismatch`) for another view count, class count or class names
        than requested. Its rows: :meth:`published_transfer_set`."""
        from .hub.reinforced import pull_teacher_cache

        return pull_teacher_cache(
            repo_id, revision, num_views=num_views, num_labels=num_labels, label_names=label_names
        )

    def published_transfer_set(self):
        """The transfer set a cache pulled with :meth:`from_hub` was published with (a ``datasets.Dataset``
        read from the repo's Parquet rows, the same commit)."""
        from .hub.reinforced import published_transfer_set

        return published_transfer_set(self)

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
                f"teacher cache shard {display_path(path)} is missing or unreadable ({detail}); {redo}"
            ) from err
        if metadata.get("fingerprint") != expected_hash:
            raise TeacherCacheMismatch(
                f"teacher cache shard {display_path(path)} belongs to another cache (fingerprint {metadata.get('fingerprint')!r}, "
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
        """The teacher's logits for view ``view`` of image ``row``: float32 ``[num_labels]``, or
        ``[num_labels, h, w]`` on the stored :attr:`grid` for a dense (segmentation) cache.

        With top-k storage the k stored logits (of the view, or of each cell) are exact to float16
        and the remaining probability mass is spread evenly over the other classes (so softmax at
        T=1 reproduces the stored top-k probabilities and the total mass).
        """
        shard, offset = self._locate(row)
        handle = self._open(shard)

        def read(name: str) -> torch.Tensor:
            return handle.get_slice(name)[offset : offset + 1, view][0]

        if self.top_k is None:
            return read("logits").float()
        values, indices, lse = read("topk_logits").float(), read("topk_indices").long(), read("logsumexp")
        return _dense_from_top_k(values, indices, lse.float(), self.num_labels)

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
        label_names: list[str] | None = None,
        teacher_view: ViewSpec | None = None,
        task_type: str | None = None,
        where: str = "the transfer set",
    ) -> None:
        """Refuse (:class:`TeacherCacheMismatch`, naming what differs) a cache that does not belong to
        these inputs; an argument left ``None`` is not checked.

        Args:
            dataset: the transfer set (its image column's fingerprint; for a published cache, also
                every row's image bytes in order, :func:`~hf_task_distill.data.fingerprints.transfer_set_digest`).
            teacher: the teacher model (its weights' fingerprint).
            num_views, num_labels: the view and class counts.
            label_names: the class names in id order (compared with the teacher's when the cache
                recorded them; transformers' ``LABEL_i`` placeholders on either side are not compared).
            teacher_view: the teacher's view spec.
            task_type (`str`, *optional*): the task type the cache is used for
                (``"image-classification"`` or ``"image-segmentation"``).
            where: what the inputs are, for the message.
        """
        expected: dict[str, Any] = {}
        if task_type is not None:
            expected["task_type"] = str(task_type)
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
        found = {k: _with_task_type(self.fingerprint).get(k) for k in expected}
        names = _label_names_differ(self.id2label, label_names)
        if found != expected or names:
            differ = [_describe_mismatch(expected, found)] if found != expected else []
            raise TeacherCacheMismatch(
                f"the teacher cache in {display_path(self.directory)} was built for other inputs than {where}: "
                f"{'; '.join(differ + ([names] if names else []))}. {self._remedy()}"
            )
        if dataset is not None and self.published:
            from .hub.reinforced import check_published_rows

            check_published_rows(self, dataset, where)

    def _remedy(self) -> str:
        if self.hub_source is not None:
            return (
                f"Distil from {self.hub_source[0]} with what it was published for (its dataset card says: "
                "rows, classes, views), or build a cache with a teacher of your own (build_teacher_cache)"
            )
        return "Rebuild it (build_teacher_cache into a new folder)"


def _label_names_differ(id2label: dict[int, str], label_names: list[str] | None) -> str:
    """What differs between a cache teacher's class names and ``label_names`` ("" if nothing)."""
    ours, theirs = _real_names(id2label), _real_names(dict(enumerate(label_names or [])))
    if ours is None or theirs is None or ours == theirs:
        return ""
    diffs = [f"{i}: '{a}' vs '{b}'" for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
    if len(ours) != len(theirs):
        diffs.append(f"{len(ours)} names vs {len(theirs)}")
    return f"label names: cache and expected differ at {'; '.join(diffs[:3])}"


def _real_names(id2label: dict[int, str]) -> list[str] | None:
    """Class names in id order, or ``None`` for none or transformers' ``LABEL_i`` placeholders."""
    from types import SimpleNamespace

    from .models.labels import label_names_of

    return label_names_of(SimpleNamespace(id2label=id2label)) if id2label else None


def _dense_from_top_k(values, indices, lse, num_classes: int) -> torch.Tensor:
    """Logits ``[C, ...]`` from the top-k ``values``/``indices`` ``[k, ...]`` and the logsumexp ``[...]``
    of every class (a vector's, or each cell's): the other ``C - k`` classes share the remaining
    probability mass evenly. Vectorised over the trailing (cell) dimensions."""
    k = values.shape[0]
    shape = (num_classes, *values.shape[1:])
    if k >= num_classes:
        return torch.empty(shape).scatter_(0, indices, values)
    kept = torch.exp(values - lse).sum(0).clamp(max=1.0)
    remainder = torch.clamp(1.0 - kept, min=1e-12)
    fill = lse + torch.log(remainder / (num_classes - k))
    return fill.expand(shape).clone().scatter_(0, indices, values)


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
    """A batch of images' K views -> the teacher's float32 logits on the CPU: ``[B, K, num_labels]``,
    or for a dense task type ``[B, K, num_labels, h, w]`` resized to the stored grid (on the device)."""

    def __init__(
        self, teacher: torch.nn.Module, num_views: int, precision: str, task_type: str, dense_grid: int | None
    ):
        self.teacher, self.num_views, self.precision = teacher.eval(), num_views, precision
        self.device = next(teacher.parameters()).device
        self.task_type, self.dense_grid = task_type, dense_grid
        self.dense = _LAYOUTS[task_type] == "dense"

    def __call__(self, rows: list[int], inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = torch.cat([item["pixels"] for item in inputs]).to(self.device, non_blocking=True)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            logits = self.teacher(pixel_values=pixels.to(next(self.teacher.parameters()).dtype)).logits
        logits = self._stored(logits.float()).cpu()
        if not torch.isfinite(logits).all():
            bad = [rows[i] for i in range(len(rows)) if not torch.isfinite(logits[i]).all()]
            raise FloatingPointError(f"the teacher produced non-finite logits for transfer rows {bad[:10]}")
        return {
            "logits": logits,
            "boxes": torch.stack([item["boxes"] for item in inputs]),
            "flips": torch.stack([item["flips"] for item in inputs]),
        }

    def _stored(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B*K, C]`` -> ``[B, K, C]``; dense ``[B*K, C, h, w]`` -> ``[B, K, C, h', w']`` on the stored
        grid (area interpolation: the mean logit over each stored cell)."""
        if logits.dim() != (4 if self.dense else 2):
            expected = "[batch, num_labels, height, width]" if self.dense else "[batch, num_labels]"
            raise ValueError(
                f"the teacher's logits have shape {list(logits.shape)}, but a teacher cache for task type "
                f"'{self.task_type}' stores {expected}: pass the teacher's task_type to build_teacher_cache"
            )
        batch = (-1, self.num_views)
        if not self.dense:
            return logits.reshape(*batch, logits.shape[-1])
        grid = stored_grid(*logits.shape[-2:], self.dense_grid)
        if grid != tuple(logits.shape[-2:]):
            logits = torch.nn.functional.interpolate(logits, size=grid, mode="area")
        return logits.reshape(*batch, *logits.shape[1:])


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

    def __init__(
        self, directory: str, fingerprint_hash: str, config: TeacherCacheConfig, num_labels: int, dense: bool
    ):
        self.directory, self.fingerprint_hash = directory, fingerprint_hash
        self.config, self.num_labels, self.dense = config, num_labels, dense

    def is_complete(self, shard: int) -> bool:
        return _shard_is_complete(os.path.join(self.directory, _shard_file(shard)), self.fingerprint_hash)

    def write(self, result: ShardResult) -> None:
        # one metadata entry: safetensors writes several in a process-dependent order, and identical
        # inputs must give byte-identical shards
        header = {"fingerprint": self.fingerprint_hash, "shard": result.index, "start": result.start}
        header.update(stop=result.stop, skipped=result.skipped)
        metadata = {"hf_task_distill": json.dumps(header, sort_keys=True)}
        tensors = _shard_tensors(result, self.config, self.num_labels, self.dense)
        write_atomically(
            os.path.join(self.directory, _shard_file(result.index)), _save_shard, tensors, metadata
        )


def _shard_tensors(
    result: ShardResult, config: TeacherCacheConfig, num_labels: int, dense: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of one shard: ``rows`` ``[N]``, ``boxes`` ``[N, K, 4]``, ``flips`` ``[N, K]`` and the
    logits ``[N, K, C(, h, w)]`` (float16), or ``topk_logits``/``topk_indices`` ``[N, K, k(, h, w)]``
    and ``logsumexp`` ``[N, K(, h, w)]`` (float32) with top-k storage."""
    k, outputs = config.num_views, result.outputs
    if outputs:
        boxes, flips, logits = outputs["boxes"], outputs["flips"], outputs["logits"]
    else:  # no readable image in the shard
        boxes, flips = torch.zeros(0, k, 4, dtype=torch.int32), torch.zeros(0, k, dtype=torch.uint8)
        logits = torch.zeros(0, k, num_labels, *((0, 0) if dense else ()))
    tensors = {"rows": result.rows, "boxes": boxes, "flips": flips}
    if config.top_k is None:
        tensors["logits"] = logits.to(torch.float16)
    else:
        values, indices = logits.topk(config.top_k, dim=2)
        tensors["topk_logits"] = values.to(torch.float16)
        tensors["topk_indices"] = indices.to(_index_dtype(num_labels, dense=dense))
        # the mass of the stored logits is computed from their float16 values, as they are read back
        tensors["logsumexp"] = torch.logsumexp(logits, dim=2)
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


def _cache_fingerprint(
    teacher, dataset, image_column, config, teacher_view, augmentation, task_type: str = CLASSIFICATION
) -> dict[str, Any]:
    """Everything a cache's validity depends on (hashed into every shard's header). A classification
    cache's fingerprint has no task type or grid, so caches built before dense targets keep theirs."""
    num_labels = int(teacher.config.num_labels)
    if config.top_k is not None and config.top_k > num_labels:
        raise ValueError(f"top_k={config.top_k} exceeds the teacher's {num_labels} labels")
    if task_type not in _LAYOUTS:
        raise ValueError(
            f"a teacher cache stores the logits of {' or '.join(_LAYOUTS)} teachers, not of task type "
            f"'{task_type}'"
        )
    dense = {"task_type": task_type, "dense_grid": config.dense_grid} if task_type != CLASSIFICATION else {}
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
        **dense,
    }


def _claim_folder(output_dir: str, fingerprint: dict[str, Any], is_main_process: bool) -> None:
    """Refuse a folder holding a cache (finished or not) for other inputs; record ours first."""
    os.makedirs(output_dir, exist_ok=True)
    for name in (COMPLETE_FILE, BUILD_FILE):
        previous = read_json(os.path.join(output_dir, name)).get("fingerprint")
        if previous is not None and previous != fingerprint:
            raise TeacherCacheMismatch(
                f"{display_path(output_dir)} holds a teacher cache built for other inputs ({_describe_mismatch(fingerprint, previous)}): "
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
    task_type: str | None = None,
    progress: bool = True,
) -> TeacherCache:
    """Run ``teacher`` on ``config.num_views`` augmented views of every image of ``dataset``; resumable.

    ``dataset`` is the transfer set (a ``datasets.Dataset`` with an image column); ``teacher_view``
    defaults to the teacher's own preprocessing and ``augmentation`` to :class:`ViewAugmentation`'s
    defaults. ``task_type`` (``"image-classification"`` or ``"image-segmentation"``, recorded in the
    cache) defaults to the teacher's (:func:`~hf_task_distill.tasks.task_type_of`); a segmentation
    teacher's ``[C, h, w]`` logits are stored on a grid of ``config.dense_grid`` cells. Finished shards
    in ``output_dir`` are kept; a folder built for other inputs is refused. Under ``accelerate launch``
    the shards are split across processes and every process returns the complete cache. The pass
    itself is :class:`~hf_task_distill.inference.ShardedInference`.
    """
    config = config or TeacherCacheConfig()
    output_dir = os.fspath(output_dir)
    image_column = _checked_transfer_set(dataset, image_column)
    teacher_view = teacher_view or ViewSpec.from_model(teacher)
    augmentation = augmentation or ViewAugmentation()
    task_type = task_type or task_type_of(teacher).name
    fingerprint = _cache_fingerprint(
        teacher, dataset, image_column, config, teacher_view, augmentation, task_type
    )
    state = process_state()
    _claim_folder(output_dir, fingerprint, state.is_main_process)
    if read_json(os.path.join(output_dir, COMPLETE_FILE)):  # an unreadable cache.json is rewritten below
        return TeacherCache(output_dir)
    num_views = config.num_views
    dense = _LAYOUTS[task_type] == "dense"
    storage = _SafetensorsShards(
        output_dir, fingerprint_hash(fingerprint), config, fingerprint["num_labels"], dense
    )
    inference = ShardedInference(
        prepare=_TeacherViews(teacher_view, augmentation, num_views, config.view_seed),
        compute=_TeacherForward(teacher, num_views, config.precision, task_type, config.dense_grid),
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

    output_dir, rows, skipped, grid = storage.directory, 0, [], None
    for shard in range(num_shards):
        path = os.path.join(output_dir, _shard_file(shard))
        if not storage.is_complete(shard):
            raise RuntimeError(f"teacher cache shard {shard} is missing from {output_dir} after the build")
        with safe_open(path, framework="pt") as f:
            shard_rows = f.get_slice("rows").get_shape()[0]
            if storage.dense and shard_rows and grid is None:
                name = "logits" if storage.config.top_k is None else "topk_logits"
                grid = f.get_slice(name).get_shape()[-2:]  # [rows, views, classes, h, w]
            rows += shard_rows
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
        **({"grid": list(grid)} if grid is not None else {}),
    }
    write_json_atomically(os.path.join(output_dir, COMPLETE_FILE), info)


# ---- training on the cache ------------------------------------------------------------------------
class CachedTeacherDataset(torch.utils.data.Dataset):
    """The transfer set as training rows: the student's rendering of a cached view, its teacher logits.

    Epoch ``e`` replays view :meth:`TeacherCache.view_for_epoch` of each image (the Trainer calls
    :meth:`set_epoch` through accelerate's data loader). Rows the cache skipped as unreadable are
    left out. ``teacher_logits`` is float32 ``[C]``, or ``[C, h, w]`` from a dense cache. ``labels`` is
    the row's target rendered by the cache's task type for the student's view and input size
    (``TaskType.render_target``: a class id, or a mask), ``-100`` for unlabelled rows as everywhere else.
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
        self.task = get_task_type(cache.task_type) if self.label_column else None
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
        view = self.cache.view(row, view_index)
        item = {
            "pixel_values": render_view(pixels, view, self.student_view),
            "teacher_logits": self.cache.logits(row, view_index),
        }
        if self.label_column:
            value = example[self.label_column]
            item["labels"] = self.task.render_target(value, view, self.label_map, size=self.student_view.size)
        return item
