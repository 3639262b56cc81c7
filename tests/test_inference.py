"""The sharded, resumable inference engine under the teacher cache and the pool embeddings, on a toy
computation (an image's mean colour) and a toy storage (one ``.pt`` file per shard)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from hf_task_distill.data.fingerprints import fingerprint_hash
from hf_task_distill.files import write_atomically
from hf_task_distill.inference import ShardedInference, ShardLayout, ShardResult, ShardStorage
from hf_task_distill.teacher_cache import model_fingerprint

UNREADABLE = (2, 7)  # rows whose cell is not an image


def _pool(num_rows: int = 11):
    """``num_rows`` one-colour 6x4 images (row r has red = 10 * r); the rows in UNREADABLE are garbage."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    cells = []
    for row in range(num_rows):
        if row in UNREADABLE:
            cells.append({"bytes": b"not an image", "path": None})
            continue
        image = Image.new("RGB", (6, 4), (10 * row, 5, 200))
        cells.append({"bytes": _png(image), "path": None})
    return Dataset.from_dict({"image": cells}, features=Features({"image": ImageFeature()}))


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _mean_colour(row: int, image) -> torch.Tensor:  # module level: picklable for loader workers
    return torch.from_numpy(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))


class _Recorder:
    """The toy model: returns each image's mean colour and its row; logs every batch; can fail at a row."""

    def __init__(self, fail_at: int | None = None):
        self.batches: list[list[int]] = []
        self.fail_at = fail_at

    def __call__(self, rows, inputs):
        if self.fail_at in rows:
            raise RuntimeError(f"killed at row {self.fail_at}")
        self.batches.append(list(rows))
        return {"colour": torch.stack(inputs), "twice": torch.tensor(rows, dtype=torch.float32)[:, None] * 2}


class _PtShards(ShardStorage):
    """One ``shard-N.pt`` per shard with the run's fingerprint inside; another fingerprint is redone."""

    name = "toy"

    def __init__(self, directory, fingerprint: str = "a"):
        self.directory, self.fingerprint = str(directory), fingerprint
        os.makedirs(self.directory, exist_ok=True)

    def path(self, shard: int) -> str:
        return os.path.join(self.directory, f"shard-{shard}.pt")

    def is_complete(self, shard: int) -> bool:
        try:
            return torch.load(self.path(shard), weights_only=True)["fingerprint"] == self.fingerprint
        except (OSError, RuntimeError, KeyError):
            return False

    def write(self, result: ShardResult) -> None:
        payload = {"fingerprint": self.fingerprint, "start": result.start, "stop": result.stop}
        payload.update(rows=result.rows, skipped=json.dumps(result.skipped), **result.outputs)
        write_atomically(self.path(result.index), lambda tmp: torch.save(payload, tmp))

    def read(self) -> dict[int, dict]:
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(".pt"))
        return {int(n[6:-3]): torch.load(os.path.join(self.directory, n), weights_only=True) for n in names}


def _engine(storage, compute, *, process_index=0, num_processes=1, num_workers=0):
    return ShardedInference(
        prepare=_mean_colour,
        compute=compute,
        storage=storage,
        layout=ShardLayout(4, process_index, num_processes),
        batch_size=3,
        num_workers=num_workers,
    )


@pytest.mark.parametrize("num_workers", [0, 1])
def test_every_row_is_computed_once_in_its_shard_and_unreadable_rows_are_counted(tmp_path, num_workers):
    pool, compute, storage = _pool(), _Recorder(), _PtShards(tmp_path)
    assert _engine(storage, compute, num_workers=num_workers).run(pool, "image", progress=False) == 11
    # batches of 3 readable rows, never across a shard: shard 0 is rows 0-3 less row 2
    assert compute.batches == [[0, 1, 3], [4, 5, 6], [8, 9, 10]]
    shards = storage.read()
    assert sorted(shards) == [0, 1, 2]
    assert [(s["start"], s["stop"]) for s in shards.values()] == [(0, 4), (4, 8), (8, 11)]
    assert [s["rows"].tolist() for s in shards.values()] == [[0, 1, 3], [4, 5, 6], [8, 9, 10]]
    for shard in shards.values():
        assert shard["rows"].dtype == torch.int64
        assert torch.equal(shard["colour"][:, 0], shard["rows"].float() * 10)  # each row's own output
        assert shard["colour"].shape == (len(shard["rows"]), 3) and shard["twice"].shape == (
            len(shard["rows"]),
            1,
        )
    skipped = [json.loads(s["skipped"]) for s in shards.values()]
    assert [[x["row"] for x in s] for s in skipped] == [[2], [7], []]
    assert skipped[0][0]["error"].startswith("ImageDecodeError: ") and len(skipped[0][0]["error"]) <= 200


def test_a_run_killed_mid_way_resumes_at_the_missing_shards_to_the_same_result(tmp_path):
    pool = _pool()
    clean = _PtShards(tmp_path / "clean")
    _engine(clean, _Recorder()).run(pool, "image", progress=False)

    killed = _PtShards(tmp_path / "killed")
    with pytest.raises(RuntimeError, match="killed at row 9"):
        _engine(killed, _Recorder(fail_at=9)).run(pool, "image", progress=False)
    assert sorted(killed.read()) == [0, 1]  # the shard being computed left nothing, not half a file
    assert not [n for n in os.listdir(killed.directory) if ".tmp-" in n]
    mtimes = {n: os.stat(killed.path(n)).st_mtime_ns for n in (0, 1)}

    resumed = _Recorder()
    _engine(killed, resumed).run(pool, "image", progress=False)
    assert resumed.batches == [[8, 9, 10]]  # only the missing shard was computed
    assert {n: os.stat(killed.path(n)).st_mtime_ns for n in (0, 1)} == mtimes  # finished shards kept
    again = _Recorder()
    _engine(killed, again).run(pool, "image", progress=False)
    assert again.batches == []  # complete: nothing computed
    resumed_shards = killed.read()
    for index, shard in clean.read().items():
        assert shard["skipped"] == resumed_shards[index]["skipped"], index
        for name in ("rows", "colour", "twice"):
            assert torch.equal(shard[name], resumed_shards[index][name]), (index, name)


def test_shards_stored_for_another_fingerprint_are_computed_again(tmp_path):
    pool = _pool()
    _engine(_PtShards(tmp_path, fingerprint="a"), _Recorder()).run(pool, "image", progress=False)
    other = _PtShards(tmp_path, fingerprint="b")
    os.remove(other.path(1))
    compute = _Recorder()
    _engine(other, compute).run(pool, "image", progress=False)
    assert compute.batches == [[0, 1, 3], [4, 5, 6], [8, 9, 10]]  # every shard, not only the missing one
    assert {s["fingerprint"] for s in other.read().values()} == {"b"}


def test_two_processes_split_the_shards_and_together_match_one(tmp_path):
    pool = _pool()
    single = _PtShards(tmp_path / "single")
    _engine(single, _Recorder()).run(pool, "image", progress=False)
    shared = _PtShards(tmp_path / "shared")
    ranks = [_Recorder(), _Recorder()]
    for rank in (0, 1):
        _engine(shared, ranks[rank], process_index=rank, num_processes=2).run(pool, "image", progress=False)
    assert ranks[0].batches == [[0, 1, 3], [8, 9, 10]] and ranks[1].batches == [
        [4, 5, 6]
    ]  # shard i: rank i % 2
    assert {i: s["rows"].tolist() for i, s in shared.read().items()} == {
        i: s["rows"].tolist() for i, s in single.read().items()
    }
    assert ShardLayout(4, 1, 2).my_shards(11) == [1] and ShardLayout(4, 0, 2).my_shards(11) == [0, 2]
    with pytest.raises(ValueError, match="process_index"):
        ShardLayout(4, 2, 2)
    with pytest.raises(ValueError, match="shard_size"):
        ShardLayout(0)


def test_a_stream_gives_the_shards_of_the_map_style_dataset_and_resumes(tmp_path):
    pool = _pool()
    mapped = _PtShards(tmp_path / "mapped")
    _engine(mapped, _Recorder()).run(pool, "image", progress=False)
    streamed = _PtShards(tmp_path / "streamed")
    stream = pool.to_iterable_dataset(num_shards=2)
    assert _engine(streamed, _Recorder()).run(stream, "image", progress=False) == 11  # rows read
    os.remove(streamed.path(0))
    compute = _Recorder()
    _engine(streamed, compute).run(stream, "image", progress=False)
    assert compute.batches == [[0, 1, 3]]
    for index, shard in mapped.read().items():
        other = streamed.read()[index]
        assert (shard["start"], shard["stop"], shard["skipped"]) == (
            other["start"],
            other["stop"],
            other["skipped"],
        )
        assert torch.equal(shard["colour"], other["colour"]) and torch.equal(shard["rows"], other["rows"])


def test_a_shard_with_no_readable_row_is_stored_empty():
    results = []

    class Keep(ShardStorage):
        def is_complete(self, shard):
            return False

        def write(self, result):
            results.append(result)

    pool = _pool(3).select([2, 2])  # row 2 twice: both unreadable
    ShardedInference(_mean_colour, _Recorder(), Keep(), ShardLayout(4)).run(pool, "image", progress=False)
    assert len(results) == 1 and results[0].outputs == {} and results[0].rows.tolist() == []
    assert [s["row"] for s in results[0].skipped] == [0, 1]


def test_the_fingerprint_hash_keeps_the_hashes_existing_folders_recorded():
    inputs = {"teacher": "abc", "num_views": 4, "view": {"size": [32, 32]}, "top_k": None}
    old_cache_hash = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint_hash(inputs) == old_cache_hash  # teacher-cache shard headers
    staged = {"path": tmp_path_like(), "seed": 3}
    old_stage_hash = hashlib.sha256(json.dumps(staged, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert fingerprint_hash(staged) == old_stage_hash  # stage inputs, non-JSON values via str
    chunks = [b"\x00\x01", "name|float32|(2,)", b"\xff"]
    assert (
        fingerprint_hash(*chunks)
        == fingerprint_hash(iter(chunks))
        == hashlib.sha256(b"\x00\x01name|float32|(2,)\xff").hexdigest()[:16]
    )
    assert fingerprint_hash({"a": 1}) != fingerprint_hash({"a": 2})
    model = torch.nn.Linear(2, 3)
    digest = hashlib.sha256(b"Linear")  # model_fingerprint as teacher caches recorded it
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert model_fingerprint(model) == digest.hexdigest()[:16]


def tmp_path_like():
    from pathlib import PurePosixPath

    return PurePosixPath("/runs/a")
