"""One sharded, resumable pass of a model over the images of a dataset.

The teacher-output cache (:func:`~hf_task_distill.teacher_cache.build_teacher_cache`) and the pool
embeddings (:func:`~hf_task_distill.retrieval.embed_pool`) are both this pass, differing only in what
they compute on a batch and how they store a shard. The engine owns the rest:

- **Shards.** Rows are cut into fixed shards (:class:`ShardLayout`): shard ``i`` holds rows
  ``[i * shard_size, (i + 1) * shard_size)`` in dataset order and is computed by process
  ``i % num_processes`` (accelerate's ``PartialState`` layout by default), so any process count,
  and any resumed run, cuts the same shards.
- **Resuming.** A shard is the unit of work: shards the :class:`ShardStorage` reports complete (for
  these inputs, its fingerprint) are skipped, and a finished shard is handed to the storage whole,
  which writes it atomically (:func:`~hf_task_distill.files.write_atomically`). A run killed at any
  moment resumes at the missing shards and never reads a partial file.
- **Unreadable rows.** Every row is decoded by :func:`~hf_task_distill.data.images.load_rgb_image`;
  one that raises :class:`~hf_task_distill.data.images.ImageDecodeError` is skipped and recorded
  (row and error) in its shard's result, every other error stops the run.
- **Batches.** Decoding and :attr:`ShardedInference.prepare` run in ``torch`` DataLoader workers
  (a map-style dataset) or in this process (a streamed ``datasets.IterableDataset``, read once);
  :attr:`ShardedInference.compute` sees batches of ``batch_size`` readable rows, in row order.
- **Finishing.** :func:`finish_on_main_process` waits for every process's shards, runs one step on the
  main process (check and index them, write a completion file) and waits for it.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .checks import check_int
from .data.images import ImageDecodeError, load_rgb_image, undecoded
from .devices import process_state

__all__ = [
    "ShardLayout",
    "ShardResult",
    "ShardStorage",
    "ShardedInference",
    "finish_on_main_process",
    "is_streamed",
]

logger = logging.getLogger(__name__)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

#: Turns one decoded image (and its row) into model inputs. Runs in DataLoader worker processes,
#: so it must be picklable: a module-level function or a small object, never one holding a model.
Prepare = Callable[[int, Any], Any]
#: Runs the model on a batch: ``(rows, inputs)`` -> named tensors, each ``[len(rows), ...]``.
Compute = Callable[[list[int], list[Any]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ShardLayout:
    """Which rows each shard holds and which shards this process computes.

    Args:
        shard_size (`int`): Rows per shard (the unit of resuming), at least 1.
        process_index (`int`, defaults to 0): This process's rank.
        num_processes (`int`, defaults to 1): How many processes share the shards; shard ``i`` is
            computed by process ``i % num_processes``.

    Raises:
        ValueError: ``shard_size < 1`` or ``process_index`` outside ``[0, num_processes)``.
    """

    shard_size: int
    process_index: int = 0
    num_processes: int = 1

    def __post_init__(self):
        check_int(self.shard_size, "shard_size", minimum=1)
        check_int(self.num_processes, "num_processes", minimum=1)
        check_int(self.process_index, "process_index", minimum=0, maximum=self.num_processes - 1)

    @classmethod
    def for_processes(
        cls, shard_size: int, process_index: int | None = None, num_processes: int | None = None
    ) -> ShardLayout:
        """The layout for ``process_index`` of ``num_processes``; accelerate's ``PartialState``
        (:func:`~hf_task_distill.devices.process_state`) when either is ``None``.

        Returns:
            `ShardLayout`
        """
        if process_index is None or num_processes is None:
            state = process_state()
            process_index, num_processes = state.process_index, state.num_processes
        return cls(shard_size, process_index, num_processes)

    def num_shards(self, num_rows: int) -> int:
        """Shards covering ``num_rows`` rows (the last one may be short)."""
        return (num_rows + self.shard_size - 1) // self.shard_size

    def rows(self, shard: int, num_rows: int) -> range:
        """Rows ``[shard * shard_size, min(num_rows, (shard + 1) * shard_size))`` of shard ``shard``."""
        return range(shard * self.shard_size, min(num_rows, (shard + 1) * self.shard_size))

    def is_mine(self, shard: int) -> bool:
        """Whether this process computes shard ``shard``."""
        return shard % self.num_processes == self.process_index

    def my_shards(self, num_rows: int) -> list[int]:
        """The shards of ``num_rows`` rows this process computes, ascending."""
        return [s for s in range(self.num_shards(num_rows)) if self.is_mine(s)]


@dataclass
class ShardResult:
    """What one shard produced, handed whole to :meth:`ShardStorage.write`.

    Args:
        index (`int`): The shard's number.
        start (`int`), stop (`int`): Its rows ``[start, stop)``.
        rows (`torch.Tensor` of shape `(N,)`, int64): The rows that have outputs (readable ones), ascending.
        outputs (`dict[str, torch.Tensor]`): Each name :attr:`ShardedInference.compute` returned,
            concatenated over the shard's batches: shape ``(N, ...)``. Empty when no row was readable.
        skipped (`list[dict]`): ``{"row": int, "error": str}`` for each unreadable row, in row order
            (the error is ``"<exception type>: <message>"`` without object addresses, at most 200
            characters, so that the same inputs give the same record).
    """

    index: int
    start: int
    stop: int
    rows: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)


class ShardStorage(abc.ABC):
    """How a shard is stored: whether one is already complete, and writing a finished one.

    Subclasses set :attr:`name` (it names the shards in log lines, e.g. ``"teacher cache"``).
    """

    name: str = "inference"

    @abc.abstractmethod
    def is_complete(self, shard: int) -> bool:
        """Whether shard ``shard`` is stored, readable and was computed from the same inputs (the
        storage's fingerprint). ``False`` has it computed again; a storage that must not overwrite
        what it finds raises instead (naming the file and what differs).

        Returns:
            `bool`
        """

    @abc.abstractmethod
    def write(self, result: ShardResult) -> None:
        """Store a finished shard atomically: a reader sees the whole shard or none of it."""


class _Loaded(NamedTuple):
    row: int
    inputs: Any = None
    error: str | None = None


def _load(row: int, cell: Any, prepare: Prepare) -> _Loaded:
    try:
        image = load_rgb_image(cell)
    except ImageDecodeError as err:  # an unreadable image is skipped and counted
        # without object addresses ("<_io.BytesIO object at 0x7f...>"): the same inputs give the same shard
        return _Loaded(row, error=_ADDRESS.sub("", f"{type(err).__name__}: {err}")[:200])
    return _Loaded(row, prepare(row, image))


class _ShardRows(torch.utils.data.Dataset):
    """Rows ``rows`` of an undecoded dataset -> each row decoded and prepared (or its decode error)."""

    def __init__(self, raw, image_column: str, rows: range, prepare: Prepare):
        self.raw, self.image_column, self.rows, self.prepare = raw, image_column, rows, prepare

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Loaded:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[_Loaded]:  # one Arrow read per batch
        rows = [self.rows[i] for i in indices]
        cells = self.raw[rows][self.image_column]
        return [_load(row, cell, self.prepare) for row, cell in zip(rows, cells, strict=True)]


class _ShardBatcher:
    """Collect one shard's rows, run ``compute`` on every ``batch_size`` readable ones, assemble the result."""

    def __init__(self, compute: Compute, batch_size: int, index: int, start: int):
        self.compute, self.batch_size, self.index, self.start = compute, batch_size, index, start
        self.pending: list[_Loaded] = []
        self.rows: list[int] = []
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.skipped: list[dict[str, Any]] = []

    def add(self, loaded: _Loaded) -> None:
        if loaded.error is not None:
            self.skipped.append({"row": loaded.row, "error": loaded.error})
            return
        self.pending.append(loaded)
        if len(self.pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        rows = [item.row for item in self.pending]
        outputs = self.compute(rows, [item.inputs for item in self.pending])
        for name, value in outputs.items():
            if value.shape[0] != len(rows):
                raise ValueError(
                    f"compute returned {value.shape[0]} rows of '{name}' for a batch of {len(rows)}"
                )
        self.outputs.append(outputs)
        self.rows.extend(rows)
        self.pending = []

    def finish(self, stop: int) -> ShardResult:
        self._flush()
        outputs = (
            {name: torch.cat([o[name] for o in self.outputs]) for name in self.outputs[0]}
            if self.outputs
            else {}
        )
        rows = torch.tensor(self.rows, dtype=torch.int64)
        return ShardResult(self.index, self.start, stop, rows, outputs, self.skipped)


def is_streamed(dataset) -> bool:
    """Whether ``dataset`` is a streamed ``datasets.IterableDataset`` (rows in order, no length)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


@dataclass
class ShardedInference:
    """A resumable, sharded pass of a model over an image column, split across processes.

    Args:
        prepare (`Callable[[int, PIL.Image.Image], Any]`): One decoded RGB image (and its row) ->
            model inputs, e.g. a rendered ``(3, H, W)`` tensor. Runs in DataLoader workers: picklable.
        compute (`Callable[[list[int], list[Any]], dict[str, torch.Tensor]]`): A batch of rows and
            their inputs -> named output tensors of shape ``(len(rows), ...)``, on the CPU.
        storage (`ShardStorage`): Which shards are complete, and how a finished one is written.
        layout (`ShardLayout`): Shard size and this process's share.
        batch_size (`int`, defaults to 64): Readable rows per ``compute`` call (and rows per
            DataLoader fetch).
        num_workers (`int`, defaults to 0): DataLoader workers decoding and preparing rows (map-style
            datasets only; a stream is read in this process).
        description (`str`), unit (`str`), units_per_row (`int`): The progress bar's label, its unit and
            how many units one row counts (e.g. 4 views per image).
    """

    prepare: Prepare
    compute: Compute
    storage: ShardStorage
    layout: ShardLayout
    batch_size: int = 64
    num_workers: int = 0
    description: str = "inference"
    unit: str = "img"
    units_per_row: int = 1

    def __post_init__(self):
        self.batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        self.num_workers = check_int(self.num_workers, "num_workers", minimum=0)

    def run(self, dataset, image_column: str, *, progress: bool = True) -> int:
        """Compute and store every shard of this process that the storage does not hold yet.

        Args:
            dataset (`datasets.Dataset` or `datasets.IterableDataset`): The rows; a stream is read
                once, by every process, decoding only the rows of its own unfinished shards.
            image_column (`str`): The column holding the images (decoded or not).
            progress (`bool`, defaults to `True`): Show a progress bar.

        Returns:
            `int`: How many rows the dataset has (for a stream: how many were read).

        Raises:
            Whatever ``prepare``, ``compute`` or the storage raise; an unreadable image is not an error.
        """
        from tqdm.auto import tqdm

        if is_streamed(dataset):
            return self._run_stream(dataset, image_column, progress)
        num_rows = len(dataset)
        mine = self.layout.my_shards(num_rows)
        todo = [shard for shard in mine if not self.storage.is_complete(shard)]
        if len(todo) < len(mine):
            logger.info(
                "Resuming the %s: %d of %d shard(s) already complete",
                self.storage.name,
                len(mine) - len(todo),
                len(mine),
            )
        total = sum(len(self.layout.rows(shard, num_rows)) for shard in todo) * self.units_per_row
        bar = tqdm(total=total, disable=not progress, desc=self.description, unit=self.unit)
        raw = undecoded(dataset.with_format(None).select_columns([image_column]), image_column)
        for shard in todo:
            rows = self.layout.rows(shard, num_rows)
            loader = torch.utils.data.DataLoader(
                _ShardRows(raw, image_column, rows, self.prepare),
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=list,  # rows stay a list of _Loaded (a builtin: picklable for workers)
            )
            batcher = _ShardBatcher(self.compute, self.batch_size, shard, rows.start)
            for items in loader:
                for item in items:
                    batcher.add(item)
                bar.update(len(items) * self.units_per_row)
            self._write(batcher.finish(rows.stop))
        bar.close()
        return num_rows

    def _run_stream(self, dataset, image_column: str, progress: bool) -> int:
        """Walk a stream once, computing the rows of this process's unfinished shards."""
        import datasets
        from tqdm.auto import tqdm

        raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        bar = tqdm(disable=not progress, desc=f"{self.description} (streamed)", unit=self.unit)
        size, batcher, row = self.layout.shard_size, None, -1
        for row, example in enumerate(raw):
            shard = row // size
            if batcher is not None and batcher.index != shard:
                self._write(batcher.finish(row))
                batcher = None
            if batcher is None and row % size == 0 and self.layout.is_mine(shard):
                if not self.storage.is_complete(shard):
                    batcher = _ShardBatcher(self.compute, self.batch_size, shard, row)
            if batcher is not None:
                batcher.add(_load(row, example[image_column], self.prepare))
                bar.update(self.units_per_row)
        if batcher is not None:
            self._write(batcher.finish(row + 1))
        bar.close()
        return row + 1

    def _write(self, result: ShardResult) -> None:
        self.storage.write(result)
        if result.skipped:
            logger.warning(
                "%s shard %d: skipped %d unreadable image(s)",
                self.storage.name.capitalize(),
                result.index,
                len(result.skipped),
            )


def finish_on_main_process(finish: Callable[[], Any]) -> None:
    """Wait for every process's shards, run ``finish`` on the main process only, then wait for it.

    ``finish`` checks and indexes the shards and writes the completion file last; after this call
    every process can read the finished result. A single process just runs ``finish``.

    Args:
        finish (`Callable[[], Any]`): The main process's step; its return value is ignored.

    Raises:
        Whatever ``finish`` raises (on the main process).
    """
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        finish()
    state.wait_for_everyone()
