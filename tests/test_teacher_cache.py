"""Teacher-output cache: same targets as the online teacher, resumable build, refusal of foreign caches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import distill_args, tiny_dinov2, tiny_processor

from hf_task_distill import (
    DistillationTrainer,
    PairedViews,
    ViewAugmentation,
    ViewSpec,
    create_student,
    load_teacher,
)
from hf_task_distill.data.views import render_view
from hf_task_distill.teacher_cache import (
    CachedTeacherDataset,
    TeacherCache,
    TeacherCacheConfig,
    TeacherCacheMismatch,
    build_teacher_cache,
    sample_views,
)

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "teacher_cache_run.py")
TEACHER_VIEW = ViewSpec.from_image_processor(tiny_processor())


def _image_pixels(dataset, row):
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(dataset[row]["image"].convert("RGB"))


def test_cached_targets_are_the_online_teachers_on_the_same_view(
    tmp_path, trained_teacher_dir, colour_splits
):
    teacher = load_teacher(str(trained_teacher_dir))
    transfer = colour_splits["transfer"].select(range(40))
    config = TeacherCacheConfig(num_views=3, shard_size=16, batch_size=10, view_seed=3)
    cache = build_teacher_cache(teacher, transfer, tmp_path / "cache", config=config, progress=False)
    assert len(cache) == 40 and cache.num_views == 3 and cache.teacher_view == TEACHER_VIEW

    student = create_student("test_resnet", teacher.config.id2label, image_size=24)
    student_view = ViewSpec.from_model(student)
    online = DistillationTrainer(
        model=student, teacher_model=teacher, args=distill_args(tmp_path), train_dataset=transfer
    )
    replay = CachedTeacherDataset(transfer, cache, student_view)
    worst = 0.0
    for row in range(40):
        pixels = _image_pixels(transfer, row)
        views = sample_views(tuple(reversed(pixels.shape[1:])), ViewAugmentation(), 3, 3, row)
        assert len({(v.top, v.left, v.height, v.width, v.flip) for v in views}) == 3  # three distinct views
        for index, view in enumerate(views):
            assert cache.view(row, index) == view  # the stored view is the one drawn for (seed, row)
            teacher_pixels = render_view(pixels, view, TEACHER_VIEW)[None]
            expected = online.teacher_logits({"teacher_pixel_values": teacher_pixels})[0]
            stored = cache.logits(row, index)
            worst = max(worst, float((stored - expected).abs().max()))
            assert torch.allclose(stored, expected, rtol=1e-3, atol=2e-3), (row, index, stored, expected)
        replay.set_epoch(1)
        item = replay[row]
        used = cache.view_for_epoch(row, 1)
        assert torch.equal(item["pixel_values"], render_view(pixels, views[used], student_view))
        assert torch.equal(item["teacher_logits"], cache.logits(row, used))
    print(f"\nlargest |cached - online| logit difference: {worst:.2e} (float16 storage)")
    # over num_views epochs every stored view of an image is replayed once
    assert sorted(cache.view_for_epoch(5, e) for e in range(3)) == [0, 1, 2]


def test_top_k_storage_keeps_the_top_probabilities_and_the_remaining_mass(
    tmp_path, trained_teacher_dir, colour_splits
):
    teacher = load_teacher(str(trained_teacher_dir))
    transfer = colour_splits["transfer"].select(range(12))
    dense = build_teacher_cache(
        teacher, transfer, tmp_path / "dense", config=TeacherCacheConfig(num_views=2), progress=False
    )
    top2 = build_teacher_cache(
        teacher, transfer, tmp_path / "top2", config=TeacherCacheConfig(num_views=2, top_k=2), progress=False
    )
    full = build_teacher_cache(
        teacher, transfer, tmp_path / "top4", config=TeacherCacheConfig(num_views=2, top_k=4), progress=False
    )
    for row in range(12):
        for view in range(2):
            p = dense.logits(row, view).softmax(-1)
            q = top2.logits(row, view).softmax(-1)
            top = p.topk(2).indices
            assert torch.allclose(q[top], p[top], atol=2e-3)  # the two kept probabilities
            rest = torch.ones(4, dtype=torch.bool)
            rest[top] = False
            assert torch.allclose(q[rest], (1 - p[top].sum()).expand(2) / 2, atol=2e-3)  # mass spread evenly
            assert torch.allclose(full.logits(row, view), dense.logits(row, view), atol=1e-3)
    with pytest.raises(ValueError, match="top_k=5 exceeds the teacher's 4 labels"):
        build_teacher_cache(
            teacher, transfer, tmp_path / "x", config=TeacherCacheConfig(top_k=5), progress=False
        )


def test_student_distilled_from_the_cache_matches_online_distillation(
    tmp_path, trained_teacher_dir, colour_splits
):
    teacher = load_teacher(str(trained_teacher_dir))
    transfer, test = colour_splits["transfer"], colour_splits["test"]
    cache = build_teacher_cache(
        teacher, transfer, tmp_path / "cache", config=TeacherCacheConfig(num_views=4), progress=False
    )
    results = {}
    for mode in ("online", "cached"):
        torch.manual_seed(0)
        student = create_student("test_resnet", teacher.config.id2label, image_size=32)
        args = distill_args(tmp_path / mode, num_train_epochs=6, temperature=2.0)
        kwargs = {"teacher_model": teacher} if mode == "online" else {"teacher_cache": cache.directory}
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=transfer, eval_dataset=test, **kwargs
        )
        trainer.train()
        results[mode] = trainer.evaluate()
        if mode == "cached":
            assert isinstance(trainer.train_dataset, CachedTeacherDataset)
            assert trainer.train_dataset.epoch == 5  # each epoch replayed its own stored view
            assert trainer._teacher is None  # no teacher was loaded or run
    print(f"\nonline: {results['online']}\ncached: {results['cached']}")
    assert results["online"]["eval_accuracy"] > 0.85
    assert results["cached"]["eval_accuracy"] > 0.85
    assert abs(results["online"]["eval_accuracy"] - results["cached"]["eval_accuracy"]) <= 0.08


def test_a_killed_cache_build_resumes_to_identical_shards(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([sys.executable, SCRIPT, "--output_dir", str(killed), "--slow"])

    def shards():
        return sorted(n for n in os.listdir(killed) if n.endswith(".safetensors")) if killed.exists() else []

    deadline = time.time() + 180
    while time.time() < deadline and len(shards()) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = shards()
    assert 3 <= len(done_before) < 10, done_before  # 10 shards of 16 images in all
    assert not (killed / "cache.json").exists()
    with pytest.raises(FileNotFoundError, match="stopped before the end"):
        TeacherCache(killed)
    mtimes = {n: os.stat(killed / n).st_mtime_ns for n in done_before}

    for folder in (killed, clean):
        assert (
            subprocess.run([sys.executable, SCRIPT, "--output_dir", str(folder)], timeout=300).returncode == 0
        )
    assert {n: os.stat(killed / n).st_mtime_ns for n in done_before} == mtimes  # finished shards kept
    names = sorted(n for n in os.listdir(clean) if n.endswith(".safetensors"))
    assert names == shards() and len(names) == 10
    for name in names:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name  # bit-identical
    assert not [n for n in os.listdir(killed) if ".tmp-" in n]


def test_a_cache_for_other_inputs_is_refused(tmp_path, colour_splits):
    teacher = tiny_dinov2(seed=0)
    transfer = colour_splits["transfer"].select(range(20))
    config = TeacherCacheConfig(num_views=2, shard_size=8)
    kwargs = dict(teacher_view=TEACHER_VIEW, progress=False)
    cache = build_teacher_cache(teacher, transfer, tmp_path / "cache", config=config, **kwargs)
    student = create_student("test_resnet", teacher.config.id2label, image_size=32)
    args = distill_args(tmp_path)

    other_teacher = tiny_dinov2(seed=1)
    with pytest.raises(TeacherCacheMismatch, match="teacher weights"):
        DistillationTrainer(
            model=student, teacher_model=other_teacher, teacher_cache=cache, args=args, train_dataset=transfer
        )
    other_transfer = colour_splits["transfer"].select(range(1, 21))
    with pytest.raises(TeacherCacheMismatch, match="transfer set"):
        DistillationTrainer(model=student, teacher_cache=cache, args=args, train_dataset=other_transfer)
    with pytest.raises(TeacherCacheMismatch, match="view count: cache has 2, expected 4"):
        cache.check(num_views=4)
    with pytest.raises(TeacherCacheMismatch, match="number of labels"):
        DistillationTrainer(
            model=create_student("test_resnet", {0: "a", 1: "b"}, image_size=32),
            teacher_cache=cache,
            args=args,
            train_dataset=transfer,
        )
    with pytest.raises(TypeError, match="map-style datasets.Dataset, got IterableDataset"):
        DistillationTrainer(
            model=student, teacher_cache=cache, args=args, train_dataset=transfer.to_iterable_dataset()
        )
    with pytest.raises(TypeError, match="is a streamed IterableDataset: .* materialise"):
        build_teacher_cache(
            teacher, transfer.to_iterable_dataset(), tmp_path / "stream", config=config, **kwargs
        )
    # building into the folder with other settings, teacher or images: refused, nothing overwritten
    before = {n: (tmp_path / "cache" / n).read_bytes() for n in os.listdir(tmp_path / "cache")}
    with pytest.raises(TeacherCacheMismatch, match="view count"):
        build_teacher_cache(
            teacher,
            transfer,
            tmp_path / "cache",
            config=TeacherCacheConfig(num_views=3, shard_size=8),
            **kwargs,
        )
    with pytest.raises(TeacherCacheMismatch, match="teacher weights"):
        build_teacher_cache(other_teacher, transfer, tmp_path / "cache", config=config, **kwargs)
    with pytest.raises(TeacherCacheMismatch, match="augmentation"):
        build_teacher_cache(
            teacher,
            transfer,
            tmp_path / "cache",
            config=config,
            augmentation=ViewAugmentation(hflip=0.0),
            teacher_view=TEACHER_VIEW,
            progress=False,
        )
    assert {n: (tmp_path / "cache" / n).read_bytes() for n in os.listdir(tmp_path / "cache")} == before
    # the same inputs find the complete cache and reuse it
    again = build_teacher_cache(teacher, transfer, tmp_path / "cache", config=config, **kwargs)
    assert np.array_equal(again.rows, cache.rows)
    # a shard swapped in from another cache is not trusted: it is rebuilt
    other = build_teacher_cache(other_teacher, transfer, tmp_path / "other", config=config, **kwargs)
    foreign = other.logits(9, 1)
    os.remove(tmp_path / "cache" / "cache.json")
    os.replace(tmp_path / "other" / "shard-00001.safetensors", tmp_path / "cache" / "shard-00001.safetensors")
    rebuilt = build_teacher_cache(teacher, transfer, tmp_path / "cache", config=config, **kwargs)
    assert torch.equal(rebuilt.logits(9, 1), cache.logits(9, 1))
    assert not torch.equal(rebuilt.logits(9, 1), foreign)


def test_unreadable_transfer_images_are_skipped_and_counted(tmp_path, colour_splits):
    from datasets import Dataset, Features, concatenate_datasets
    from datasets import Image as ImageFeature

    good = colour_splits["transfer"].select(range(6)).cast_column("image", ImageFeature(decode=False))
    cells = [{"bytes": b"not an image", "path": None}, {"bytes": b"", "path": None}]
    bad = Dataset.from_dict({"image": cells}, features=Features({"image": ImageFeature(decode=False)}))
    transfer = concatenate_datasets([good.select(range(3)), bad, good.select(range(3, 6))])
    cache = build_teacher_cache(
        tiny_dinov2(),
        transfer,
        tmp_path / "cache",
        config=TeacherCacheConfig(num_views=2, shard_size=4),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    assert len(cache) == 6 and list(cache.rows) == [0, 1, 2, 5, 6, 7]
    assert [s["row"] for s in cache.skipped] == [3, 4]
    assert (
        "UnidentifiedImageError" in cache.skipped[0]["error"]
        or "cannot identify" in cache.skipped[0]["error"]
    )
    replay = CachedTeacherDataset(transfer, cache, TEACHER_VIEW)
    assert len(replay) == 6 and replay[3]["pixel_values"].shape == (3, 32, 32)  # row 5, past the skipped two
    with pytest.raises(KeyError, match="row 3 has no cached teacher output"):
        cache.logits(3, 0)


def test_paired_views_of_the_cache_are_the_ones_the_trainer_uses_for_evaluation(tmp_path, colour_splits):
    """With a cache and no teacher, evaluation renders the student's view only and reports label metrics."""
    teacher = tiny_dinov2()
    transfer = colour_splits["transfer"].select(range(16))
    cache = build_teacher_cache(
        teacher,
        transfer,
        tmp_path / "cache",
        config=TeacherCacheConfig(num_views=1),
        teacher_view=TEACHER_VIEW,
        progress=False,
    )
    student = create_student("test_resnet", teacher.config.id2label, image_size=24)
    trainer = DistillationTrainer(
        model=student,
        teacher_cache=cache,
        args=distill_args(tmp_path),
        train_dataset=transfer,
        eval_dataset=colour_splits["test"].select(range(32)),
    )
    assert trainer.views == PairedViews(TEACHER_VIEW, ViewSpec.from_model(student), ViewAugmentation())
    metrics = trainer.evaluate()
    assert "eval_accuracy" in metrics and "eval_agreement" not in metrics
    assert metrics["eval_loss"] > 0  # the label cross-entropy: there is no teacher to compare with
