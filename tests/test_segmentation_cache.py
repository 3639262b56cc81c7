"""Teacher-output cache for dense (segmentation) teachers: the online teacher's logits on the stored
grid, top-k per cell, the task type recorded and checked, resumable builds, the storage formula."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from conftest import make_colour_dataset, tiny_dinov2, tiny_processor

from hf_task_distill import ViewAugmentation, ViewSpec, create_student
from hf_task_distill.data.views import render_view
from hf_task_distill.distillation_data import cached_dataset
from hf_task_distill.tasks import TaskType, available_task_types, register_task_type, unregister_task_type
from hf_task_distill.teacher_cache import (
    CachedTeacherDataset,
    TeacherCache,
    TeacherCacheConfig,
    TeacherCacheMismatch,
    _dense_from_top_k,
    build_teacher_cache,
    sample_views,
    stored_grid,
    teacher_cache_bytes_per_image,
)

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "teacher_cache_run.py")
TEACHER_VIEW = ViewSpec.from_image_processor(tiny_processor())  # 32 x 32
SEGMENTATION = "image-segmentation"
NUM_LABELS = 5
#: float16 keeps 11 significant bits: a stored logit is within half a unit in the last place of the
#: teacher's (|x| * 2**-11), plus what a second forward pass of the same teacher differs by on CPU
FP16_RTOL, FP16_ATOL = 2**-11, 1e-4


def tiny_segformer(num_labels: int = NUM_LABELS, seed: int = 0):
    """A 2-stage, 7k-parameter SegFormer: ``[B, num_labels, H/4, W/4]`` logits, its classifier scaled so
    that they spread as a trained teacher's do (std ~3 instead of ~1e-3 at initialisation: float16
    rounding and the top-k mass are then exercised)."""
    import conftest

    model = conftest.tiny_segformer(num_labels, seed)
    with torch.no_grad():
        spread = model(
            pixel_values=torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        ).logits
        model.decode_head.classifier.weight.mul_(3.0 / float(spread.std()))
    return model


@pytest.fixture(scope="module")
def transfer():
    return make_colour_dataset(12, seed=2, labelled=False)


def _build(teacher, transfer, folder, task_type=SEGMENTATION, **config):
    config = TeacherCacheConfig(**{"num_views": 2, "shard_size": 5, "batch_size": 6, **config})
    return build_teacher_cache(
        teacher,
        transfer,
        folder,
        config=config,
        teacher_view=TEACHER_VIEW,
        task_type=task_type,
        progress=False,
    )


def _online(teacher, transfer, row, num_views, grid):
    """The teacher run on each stored view of ``row`` here, its logits area-resized to ``grid``."""
    from torchvision.transforms.v2 import functional as TF

    pixels = TF.pil_to_tensor(transfer[row]["image"].convert("RGB"))
    views = sample_views(tuple(reversed(pixels.shape[1:])), ViewAugmentation(), num_views, 0, row)
    batch = torch.stack([render_view(pixels, view, TEACHER_VIEW) for view in views])
    with torch.no_grad():
        logits = teacher(pixel_values=batch).logits
    return views, torch.nn.functional.adaptive_avg_pool2d(logits, grid)


def test_dense_cached_targets_are_the_online_teachers_on_the_stored_grid(tmp_path, transfer):
    teacher = tiny_segformer()
    cache = _build(teacher, transfer, tmp_path / "cache", dense_grid=4)
    native = _build(teacher, transfer, tmp_path / "native", dense_grid=None)
    assert cache.task_type == SEGMENTATION and cache.dense and cache.grid == (4, 4)
    assert native.grid == (8, 8)  # the teacher's own H/4 grid, kept
    assert (cache.fingerprint["task_type"], cache.fingerprint["dense_grid"]) == (SEGMENTATION, 4)
    student_view = ViewSpec(size=(24, 24), mean=(0.5,) * 3, std=(0.5,) * 3)
    replay = CachedTeacherDataset(transfer, cache, student_view)
    worst = 0.0
    for row in range(12):
        views, expected = _online(teacher, transfer, row, 2, (4, 4))
        _, full = _online(teacher, transfer, row, 2, (8, 8))
        for index, view in enumerate(views):
            assert cache.view(row, index) == view
            stored = cache.logits(row, index)
            assert stored.dtype == torch.float32 and stored.shape == (NUM_LABELS, 4, 4)
            worst = max(worst, float((stored - expected[index]).abs().max()))
            torch.testing.assert_close(stored, expected[index], rtol=FP16_RTOL, atol=FP16_ATOL)
            torch.testing.assert_close(native.logits(row, index), full[index], rtol=FP16_RTOL, atol=FP16_ATOL)
        replay.set_epoch(3)
        item = replay[row]
        used = cache.view_for_epoch(row, 3)
        assert set(item) == {"pixel_values", "teacher_logits"}  # an unlabelled transfer set
        assert item["pixel_values"].shape == (3, 24, 24)
        assert torch.equal(item["teacher_logits"], cache.logits(row, used))
    print(f"\nlargest |cached - online| dense logit difference: {worst:.2e} (float16 storage)")


def test_dense_top_k_keeps_each_cells_top_logits_and_remaining_mass(tmp_path, transfer):
    teacher = tiny_segformer()
    top2 = _build(teacher, transfer, tmp_path / "top2", dense_grid=4, top_k=2)
    every = _build(teacher, transfer, tmp_path / "top5", dense_grid=4, top_k=NUM_LABELS)
    with open(tmp_path / "top2" / "shard-00000.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["topk_indices"]["dtype"] == "U8" and header["topk_indices"]["shape"] == [5, 2, 2, 4, 4]
    assert header["logsumexp"]["shape"] == [5, 2, 4, 4]
    for row in range(12):
        _, online = _online(teacher, transfer, row, 2, (4, 4))
        for view in range(2):
            replayed = top2.logits(row, view)
            assert replayed.shape == (NUM_LABELS, 4, 4)
            top = online[view].topk(2, dim=0).indices  # [2, 4, 4]
            kept, truth = replayed.gather(0, top), online[view].gather(0, top)
            torch.testing.assert_close(kept, truth, rtol=FP16_RTOL, atol=FP16_ATOL)  # exact to float16
            p, q = online[view].softmax(0), replayed.softmax(0)
            rest = torch.ones_like(p, dtype=torch.bool).scatter_(0, top, False)
            # a kept probability moves by its logit's float16 rounding: exp(+-|x| 2**-11) - 1, relatively
            bound = p.gather(0, top) * (torch.exp(truth.abs() * FP16_RTOL + FP16_ATOL) - 1) + 1e-6
            assert ((q.gather(0, top) - p.gather(0, top)).abs() <= bound).all()
            remaining = (q * rest).sum(0)  # [4, 4], the mass of the other classes
            assert ((remaining - (1 - p.gather(0, top).sum(0))).abs() <= bound.sum(0)).all()
            even = (remaining / 3).expand(NUM_LABELS, 4, 4)  # the other 3 classes of a cell share it evenly
            torch.testing.assert_close(q[rest], even[rest], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(every.logits(row, view), online[view], rtol=FP16_RTOL, atol=FP16_ATOL)
    # the vectorised replay is the classification replay applied to every cell
    values, indices = torch.randn(3, 2, 3).half().float(), torch.rand(7, 2, 3).argsort(0)[:3]
    lse = torch.randn(2, 3) + 4
    dense = _dense_from_top_k(values, indices, lse, 7)
    for i in range(2):
        for j in range(3):
            assert torch.equal(
                dense[:, i, j], _dense_from_top_k(values[:, i, j], indices[:, i, j], lse[i, j], 7)
            )


def _tensor_bytes(folder) -> int:
    """Bytes of tensor data in a cache's shards: each file less its 8-byte length and JSON header."""
    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb") as f:
                header_length = struct.unpack("<Q", f.read(8))[0]
            total += os.path.getsize(os.path.join(folder, name)) - 8 - header_length
    return total


def test_storage_per_image_is_the_documented_formula(tmp_path, transfer):
    teacher = tiny_segformer()
    for name, config in {"fp16": {}, "top2": {"top_k": 2}, "grid3": {"dense_grid": 3, "top_k": 3}}.items():
        cache = _build(teacher, transfer, tmp_path / name, num_views=3, **config)
        per_image = teacher_cache_bytes_per_image(3, NUM_LABELS, grid=cache.grid, top_k=config.get("top_k"))
        assert _tensor_bytes(tmp_path / name) == len(cache) * per_image, name
    assert cache.grid == (3, 3)  # 8x8 area-resized to a longer side of 3
    classification = build_teacher_cache(
        tiny_dinov2(),
        transfer,
        tmp_path / "classes",
        config=TeacherCacheConfig(num_views=2, top_k=2, shard_size=5),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    assert classification.grid is None and classification.task_type == "image-classification"
    per_image = teacher_cache_bytes_per_image(2, 4, top_k=2)
    assert _tensor_bytes(tmp_path / "classes") == len(classification) * per_image == 12 * (8 + 2 * (17 + 16))
    # the paper's ADE20K transfer (docs/performance.md): 150 classes, 4 views, a 32 x 32 grid
    assert teacher_cache_bytes_per_image(4, 150, grid=stored_grid(128, 128, 32)) == 1_228_876
    assert teacher_cache_bytes_per_image(4, 150, grid=(32, 32), top_k=5) == 77_900
    assert stored_grid(128, 96, 32) == (32, 24) and stored_grid(7, 5, 32) == (7, 5)


class _StubSegmentation(TaskType):
    """Stands in for the package's segmentation task type where it is not registered yet: only
    :func:`task_type_of` is asked here."""

    name = SEGMENTATION

    def model_class(self):
        from transformers import AutoModelForSemanticSegmentation

        return AutoModelForSemanticSegmentation

    def render_target(self, value, view, label_map, *, size=None):
        raise NotImplementedError

    def evaluate(self, model, dataset, *, task, batch_size, where):
        raise NotImplementedError


@pytest.fixture
def segmentation_task_type():
    added = SEGMENTATION not in available_task_types()
    if added:
        register_task_type(_StubSegmentation)
    yield
    if added:
        unregister_task_type(SEGMENTATION)


def test_a_cache_for_another_task_type_teacher_or_view_count_is_refused(
    tmp_path, transfer, segmentation_task_type
):
    teacher = tiny_segformer()
    dense = _build(teacher, transfer, tmp_path / "dense", dense_grid=4)
    classes = build_teacher_cache(
        tiny_dinov2(num_labels=NUM_LABELS),
        transfer,
        tmp_path / "classes",
        config=TeacherCacheConfig(num_views=2, shard_size=5),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    # a cache without a task type is image classification, with the fingerprint it always had
    assert classes.task_type == "image-classification" and not classes.dense
    assert set(classes.fingerprint) == {
        "format", "teacher", "dataset", "num_views", "top_k", "seed", "shard_size", "num_labels",
        "teacher_view", "augmentation",
    }  # fmt: skip
    with pytest.raises(
        TeacherCacheMismatch,
        match="task type: cache has 'image-classification', expected 'image-segmentation'",
    ):
        classes.check(task_type=SEGMENTATION)
    with pytest.raises(
        TeacherCacheMismatch,
        match="task type: cache has 'image-segmentation', expected 'image-classification'",
    ):
        dense.check(task_type="image-classification")
    dense.check(task_type=SEGMENTATION, teacher=teacher, num_views=2, num_labels=NUM_LABELS)
    with pytest.raises(TeacherCacheMismatch, match="teacher weights"):
        dense.check(teacher=tiny_segformer(seed=1))
    with pytest.raises(TeacherCacheMismatch, match="view count: cache has 2, expected 3"):
        dense.check(num_views=3)
    # the trainer's path: the student's task type must be the cache's
    view = ViewSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    classifier = create_student("test_resnet", {i: str(i) for i in range(NUM_LABELS)}, image_size=32)
    segmenter = tiny_segformer()
    with pytest.raises(TeacherCacheMismatch, match="task type: cache has 'image-segmentation'"):
        cached_dataset(transfer, dense, classifier, view, NUM_LABELS)
    with pytest.raises(TeacherCacheMismatch, match="task type: cache has 'image-classification'"):
        cached_dataset(transfer, classes, segmenter, view, NUM_LABELS)
    replay = cached_dataset(transfer, dense, segmenter, view, NUM_LABELS)
    assert replay[0]["teacher_logits"].shape == (NUM_LABELS, 4, 4)
    # building into a folder for other settings or as another task type: refused, nothing written
    before = {n: (tmp_path / "dense" / n).read_bytes() for n in os.listdir(tmp_path / "dense")}
    with pytest.raises(TeacherCacheMismatch, match="dense grid: cache has 4, expected 3"):
        _build(teacher, transfer, tmp_path / "dense", dense_grid=3)
    with pytest.raises(TeacherCacheMismatch, match="task type: cache has 'image-segmentation'"):
        _build(teacher, transfer, tmp_path / "dense", task_type="image-classification")
    assert {n: (tmp_path / "dense" / n).read_bytes() for n in os.listdir(tmp_path / "dense")} == before
    wrong = r"logits have shape \[6, 5, 8, 8\], but a teacher cache for task type 'image-classification'"
    with pytest.raises(ValueError, match=wrong):
        _build(teacher, transfer, tmp_path / "wrong", task_type="image-classification")
    with pytest.raises(ValueError, match="not of task type 'object-detection'"):
        _build(teacher, transfer, tmp_path / "x", task_type="object-detection")
    assert not (tmp_path / "x").exists()


def test_a_killed_dense_cache_build_resumes_to_identical_shards(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([sys.executable, SCRIPT, "--output_dir", str(killed), "--slow", "--dense"])

    def shards():
        return sorted(n for n in os.listdir(killed) if n.endswith(".safetensors")) if killed.exists() else []

    deadline = time.time() + 180
    while time.time() < deadline and len(shards()) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = shards()
    assert 3 <= len(done_before) < 10, done_before  # 10 shards of 16 images in all
    with pytest.raises(FileNotFoundError, match="stopped before the end"):
        TeacherCache(killed)
    mtimes = {n: os.stat(killed / n).st_mtime_ns for n in done_before}
    for folder in (killed, clean):
        run = [sys.executable, SCRIPT, "--output_dir", str(folder), "--dense"]
        assert subprocess.run(run, timeout=300).returncode == 0
    assert {n: os.stat(killed / n).st_mtime_ns for n in done_before} == mtimes  # finished shards kept
    names = sorted(n for n in os.listdir(clean) if n.endswith(".safetensors"))
    assert names == shards() and len(names) == 10
    for name in names:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name  # bit-identical
    resumed = TeacherCache(killed)
    assert resumed.task_type == SEGMENTATION and resumed.top_k == 2 and resumed.grid == (4, 4)
    assert resumed.logits(100, 1).shape == (NUM_LABELS, 4, 4)


def test_labelled_transfer_rows_get_the_cache_task_types_target_in_the_students_class_order(tmp_path):
    """A transfer set with labels: each row's target is rendered by the cache's task type (here image
    classification: the class id, mapped to the student's order by name)."""
    from conftest import LABELS

    labelled = make_colour_dataset(8, seed=4)
    cache = build_teacher_cache(
        tiny_dinov2(),
        labelled,
        tmp_path / "cache",
        config=TeacherCacheConfig(num_views=2),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    order = list(reversed(LABELS))
    student = create_student("test_resnet", dict(enumerate(order)), image_size=32)
    replay = cached_dataset(labelled, cache, student, ViewSpec.from_model(student), len(LABELS))
    for row in range(8):
        assert replay[row]["labels"] == order.index(LABELS[labelled[row]["label"]])
