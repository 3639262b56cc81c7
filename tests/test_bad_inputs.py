"""The bad-input suite: each malformed input ends in one clear error or a counted skip.

One table, one row per malformed input, each built tiny in ``tmp_path`` and fed to the public API.
An error must be of a specific type and name what is wrong (the row, file, column, key or flag); a
skip must be counted, with the good items still processed. Categories:

* images: a labelled set's bad file is an error naming its row and file (empty, truncated PNG/JPEG,
  text named .jpg, decompression bomb, 300:2 sliver, missing file, cells that are not images);
  a web pool's or transfer set's bad files are skipped and counted.
* labels: unknown names, ids out of range, negative, fractional, NaN, no labelled row, missing
  columns/splits, repeated names, a class without a training image, a label budget above a class's
  size, teacher/student label spaces that differ.
* configs: conflicting or out-of-range command-line flags (exit code 2, one line, nothing run),
  unknown settings, unparsable config files, bad ``DistillationArguments``/``TeacherFinetuningArguments``
  /``TeacherCacheConfig`` values.
* cache files: a teacher cache whose ``cache.json`` or shards are garbage, missing, truncated or
  foreign, or built for another teacher/view count; pool-embedding folders with a garbage manifest,
  a truncated shard or another encoder's vectors.
* checkpoints: a Trainer checkpoint without a readable ``trainer_state.json`` is passed over.
* stage manifests: garbage, truncated or incomplete means "not complete"; an output file changed,
  missing or added since the manifest was written makes the stage redo itself.
* model folders: remote code, pickle-only weights and a headless backbone are refused.
* figures: a confusion matrix of the wrong shape is an error; a garbage ``confusion_matrices.json``
  skips that figure with a warning naming the file (the results chart is still drawn).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    LABELS,
    distill_args,
    make_colour_dataset,
    png_header_claiming,
    repo_with_remote_code,
    tiny_dinov2,
    tiny_encoder,
    tiny_processor,
)
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets
from datasets import Image as ImageFeature
from PIL import Image

from hf_task_distill import DistillationArguments, TeacherFinetuningArguments, ViewSpec, load_teacher
from hf_task_distill.checkpoints import last_complete_checkpoint
from hf_task_distill.cli import main
from hf_task_distill.config import PipelineConfig
from hf_task_distill.data import load_target_task
from hf_task_distill.data.images import ImageDecodeError
from hf_task_distill.data.validation import check_images_decode
from hf_task_distill.models.labels import check_label_spaces_match
from hf_task_distill.retrieval import EmbeddingStore, RetrievalTransferSetBuilder, embed_pool
from hf_task_distill.teacher_cache import (
    TeacherCache,
    TeacherCacheConfig,
    TeacherCacheMismatch,
    build_teacher_cache,
)

# ---- outcomes ---------------------------------------------------------------------------------------


@dataclass
class Raises:
    """``error`` whose message matches ``match`` (a regex naming the culprit)."""

    error: type[BaseException]
    match: str


@dataclass
class ExitsWith:
    """The CLI returns 2 and prints one ``hf-task-distill: error:`` line matching ``match``."""

    match: str


@dataclass
class Counted:
    """The call succeeds; ``check(result, log_text)`` asserts the skip count and the surviving items."""

    check: Callable[[Any, str], None]


# ---- shared inputs ----------------------------------------------------------------------------------

CACHE_CONFIG = TeacherCacheConfig(num_views=1, shard_size=4, batch_size=8)


@dataclass
class Kit:
    teacher: torch.nn.Module
    other_teacher: torch.nn.Module
    view: ViewSpec
    transfer: Dataset  # 8 unlabelled colour images
    cache_dir: str  # a complete teacher cache of ``transfer``: 2 shards of 4 rows
    other_cache_dir: str  # the same, from ``other_teacher``
    embeddings_dir: str  # ``transfer`` embedded by the tiny encoder: 2 shards of 4 rows

    def copy(self, folder: str, tmp_path) -> pathlib.Path:
        return shutil.copytree(folder, tmp_path / os.path.basename(folder))

    def build_cache(self, folder, dataset=None, teacher=None, config=CACHE_CONFIG):
        return build_teacher_cache(
            teacher or self.teacher,
            self.transfer if dataset is None else dataset,
            folder,
            config=config,
            teacher_view=self.view,
            progress=False,
        )


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    kit = Kit(
        teacher=tiny_dinov2(seed=0),
        other_teacher=tiny_dinov2(seed=1),
        view=ViewSpec.from_image_processor(tiny_processor()),
        transfer=make_colour_dataset(8, seed=2, labelled=False),
        cache_dir=str(root / "cache"),
        other_cache_dir=str(root / "other_cache"),
        embeddings_dir=str(root / "embeddings"),
    )
    kit.build_cache(kit.cache_dir)
    kit.build_cache(kit.other_cache_dir, teacher=kit.other_teacher)
    embed_pool(
        kit.transfer, tiny_encoder(), kit.embeddings_dir, shard_size=4, num_processes=1, process_index=0
    )
    return kit


def _encoded(fmt: str, size=(12, 9)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


BAD_FILES = {
    "empty.png": b"",
    "cut.png": _encoded("PNG")[:60],
    "cut.jpg": _encoded("JPEG")[: len(_encoded("JPEG")) // 2],
    "notes.jpg": b"shopping list: eggs, milk\n",
    "bomb.png": png_header_claiming(60_000, 60_000),
    "sliver.png": _encoded("PNG", size=(300, 2)),
}


def _image_files(tmp_path, bad: list[str], good: int = 2) -> list[str]:
    """``good`` readable PNG paths, then one path per name in ``bad`` (``gone.png`` is never written)."""
    paths = []
    for i in range(good):
        paths.append(str(tmp_path / f"good-{i}.png"))
        make_colour_dataset(1, seed=i)[0]["image"].save(paths[-1])
    for name in bad:
        paths.append(str(tmp_path / name))
        if name in BAD_FILES:
            (tmp_path / name).write_bytes(BAD_FILES[name])
    return paths


def _path_dataset(paths: list[str]) -> Dataset:
    return Dataset.from_dict({"image": paths}, features=Features({"image": ImageFeature(decode=False)}))


def _labelled(labels: list, dtype: str = "int64", **columns) -> Dataset:
    images = [Image.new("RGB", (8, 8), (40 * i % 255, 90, 160)) for i in range(len(labels))]
    features = {"image": ImageFeature(), "label": Value(dtype) if isinstance(dtype, str) else dtype}
    return Dataset.from_dict({"image": images, "label": labels}, features=Features(features))


def _strings(labels: list[str]) -> Dataset:
    return _labelled(labels, dtype="string")


# ---- images -----------------------------------------------------------------------------------------


def _labelled_file(name: str):
    """A labelled split of two good files and ``name`` (row 2): check_images_decode names row and file."""

    def make(tmp_path, kit):
        dataset = _path_dataset(_image_files(tmp_path, [name]))
        return lambda: check_images_decode(dataset, "image", where="train split")

    return make


def _labelled_image_cells(cells: list, feature=None):
    def make(tmp_path, kit):
        data = {"image": cells}
        dataset = Dataset.from_dict(data, features=Features({"image": feature}) if feature else None)
        return lambda: check_images_decode(dataset, "image", where="train split")

    return make


def _numeric_image_column(tmp_path, kit):
    dataset = Dataset.from_dict({"image": [3, 1, 4], "label": [0, 1, 0]})
    return lambda: load_target_task(dataset, image_column="image", label_names=["a", "b"])


def _pool_with_bad_files(tmp_path, kit):
    pool = _path_dataset(_image_files(tmp_path, ["empty.png", "notes.jpg", "cut.jpg"], good=6))
    queries = make_colour_dataset(2, seed=5)
    builder = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=3, shard_size=4)
    return lambda: builder.build(pool, queries, embeddings_dir=tmp_path / "embeddings")


def _check_pool_skips(result, log):
    transfer, stats = result
    assert stats.pool_unreadable == 3 and stats.pool_rows == 9 and stats.pool_embedded == 6
    assert len(transfer) > 0 and set(transfer["pool_index"]) <= set(range(6))  # only good rows retrieved
    assert "unreadable image(s)" in log  # and the run says so


def test_unreadable_query_images_are_skipped_and_counted(tmp_path):
    """A labelled image that cannot be decoded is not a query; the count says so, the rest retrieve."""
    pool = make_colour_dataset(12, seed=3, labelled=False)
    queries = _path_dataset(_image_files(tmp_path, ["empty.png"], good=2))
    transfer, stats = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=3).build(
        pool, queries, embeddings_dir=tmp_path / "embeddings"
    )
    assert stats.queries_unreadable == 1 and stats.queries == 2
    assert set(transfer["query_index"]) <= {0, 1} and len(transfer) >= 3


def _streamed_pool_with_bad_files(tmp_path, kit):
    from hf_task_distill.retrieval import load_pool

    folder = _image_folder(
        tmp_path, labelled=False, bad="notes.jpg", prefix="0-"
    )  # read before the good ones
    pool = load_pool(str(folder), streaming=True)
    builder = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=3, shard_size=4)
    return lambda: builder.build(pool, make_colour_dataset(2, seed=5), embeddings_dir=tmp_path / "e")


def _check_streamed_pool_skips(result, log):
    transfer, stats = result
    assert stats.pool_unreadable == 1 and stats.pool_rows == 12 and len(transfer) >= 3
    assert transfer[0]["image"].size[0] > 0  # the chosen rows decode, as in a map-style pool


def _pool_all_bad(tmp_path, kit):
    pool = _path_dataset(_image_files(tmp_path, ["empty.png", "notes.jpg", "gone.png"], good=0))
    builder = RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=3)
    return lambda: builder.build(pool, make_colour_dataset(2, seed=5), embeddings_dir=tmp_path / "e")


def _transfer_with_bad_files(tmp_path, kit):
    good = kit.transfer.select(range(4)).cast_column("image", ImageFeature(decode=False))
    bad = _path_dataset(_image_files(tmp_path, ["gone.png", "cut.png"], good=0))
    transfer = concatenate_datasets([good.select(range(2)), bad, good.select(range(2, 4))])
    return lambda: kit.build_cache(tmp_path / "cache", dataset=transfer)


def _check_transfer_skips(cache, log):
    assert [s["row"] for s in cache.skipped] == [2, 3]
    assert "gone.png" in cache.skipped[0]["error"] and "truncated" in cache.skipped[1]["error"]
    assert list(cache.rows) == [0, 1, 4, 5] and cache.logits(4, 0).shape == (4,)


def _transfer_all_bad(tmp_path, kit):
    transfer = _path_dataset(_image_files(tmp_path, ["notes.jpg", "bomb.png"], good=0))
    return lambda: kit.build_cache(tmp_path / "cache", dataset=transfer)


# ---- labels -----------------------------------------------------------------------------------------


def _task(make_source, **kwargs):
    def make(tmp_path, kit):
        source = make_source()
        return lambda: load_target_task(source, **kwargs)

    return make


def _budget_above_class_size(tmp_path, kit):
    task = load_target_task(make_colour_dataset(12, seed=0), name="colours")
    return lambda: task.with_label_budget(per_class=50, seed=0)


def _check_budget(task, log):
    assert len(task["train"]) == 12 and task.label_budget["size"] == 12  # everything there is
    assert "Label budget of 50 per class: 4 class(es) have fewer and keep all they have" in log


def _label_spaces(teacher_names, student_names):
    def make(tmp_path, kit):
        from transformers import PretrainedConfig

        teacher = PretrainedConfig(id2label=dict(enumerate(teacher_names)))
        student = PretrainedConfig(id2label=dict(enumerate(student_names)))
        return lambda: check_label_spaces_match(teacher, student)

    return make


# ---- configs ----------------------------------------------------------------------------------------


def _cli(*flags: str):
    def make(tmp_path, kit):
        argv = ["run", "--dataset", "digits", "--output_dir", str(tmp_path / "run"), *flags]
        return lambda: main(argv)

    return make


def _cli_command(command: str, *flags: str):
    def make(tmp_path, kit):
        return lambda: main([command, "--dataset", "digits", "--output_dir", str(tmp_path / "run"), *flags])

    return make


def _cli_with_folder_student(*flags: str):
    def make(tmp_path, kit):
        kit.teacher.save_pretrained(tmp_path / "dinov2-student")
        argv = ["run", "--dataset", "digits", "--student", str(tmp_path / "dinov2-student")]
        return lambda: main([*argv, "--output_dir", str(tmp_path / "run"), *flags])

    return make


def _cli_config_file(text: str, suffix: str):
    def make(tmp_path, kit):
        path = tmp_path / f"bad-config{suffix}"
        path.write_text(text)
        return lambda: main(["run", str(path)])

    return make


def _call(function: Callable[[], Any]):
    return lambda tmp_path, kit: function


# ---- cache files ------------------------------------------------------------------------------------


def _damaged_cache(damage: Callable[[str, Kit], None], read: str = "open"):
    def make(tmp_path, kit):
        folder = kit.copy(kit.cache_dir, tmp_path)
        damage(folder, kit)
        if read == "build":
            return lambda: kit.build_cache(folder)
        return lambda: TeacherCache(folder)

    return make


def _write(name: str, data: bytes):
    return lambda folder, kit: (pathlib.Path(folder) / name).write_bytes(data)


def _truncate(name: str):
    def damage(folder, kit):
        path = pathlib.Path(folder) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _remove(name: str):
    return lambda folder, kit: os.remove(os.path.join(folder, name))


def _foreign_shard(folder, kit):
    name = "shard-00001.safetensors"
    shutil.copy(os.path.join(kit.other_cache_dir, name), os.path.join(folder, name))


def _cache_for_other_teacher(tmp_path, kit):
    cache = TeacherCache(kit.cache_dir)
    return lambda: cache.check(teacher=kit.other_teacher)


def _cache_for_other_view_count(tmp_path, kit):
    folder = kit.copy(kit.cache_dir, tmp_path)
    return lambda: kit.build_cache(folder, config=TeacherCacheConfig(num_views=3, shard_size=4))


def _damaged_embeddings(damage: Callable[[str, Kit], None]):
    def make(tmp_path, kit):
        folder = kit.copy(kit.embeddings_dir, tmp_path)
        damage(folder, kit)
        return lambda: EmbeddingStore(folder).load()

    return make


def _embeddings_from_another_encoder(tmp_path, kit):
    from conftest import pixel_encoder

    folder = kit.copy(kit.embeddings_dir, tmp_path)
    return lambda: embed_pool(
        kit.transfer, pixel_encoder(), folder, shard_size=4, num_processes=1, process_index=0
    )


def _embeddings_of_another_dataset(tmp_path, kit):
    folder = kit.copy(kit.embeddings_dir, tmp_path)
    others = make_colour_dataset(8, seed=3, labelled=False)  # same size and encoder, other images
    return lambda: embed_pool(others, tiny_encoder(), folder, shard_size=4, num_processes=1, process_index=0)


# ---- checkpoints ------------------------------------------------------------------------------------


def _checkpoints(newest_state: bytes | None):
    """checkpoint-10 is complete; checkpoint-20 has weights but no readable ``trainer_state.json``."""

    def make(tmp_path, kit):
        for step, state in ((10, b'{"epoch": 1.0}'), (20, newest_state)):
            folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            (folder / "model.safetensors").write_bytes(b"weights")
            if state is not None:
                (folder / "trainer_state.json").write_bytes(state)
        return lambda: last_complete_checkpoint(tmp_path / "checkpoints")

    return make


def _check_checkpoint(found, log):
    assert found is not None and found.endswith("checkpoint-10")
    assert "ignoring incomplete checkpoint" in log and "checkpoint-20" in log


# ---- stage manifests --------------------------------------------------------------------------------


def _stage(damage: Callable[[pathlib.Path], None]):
    """A complete 'teacher' stage (a model file and its manifest), then ``damage``; the result is
    what a rerun decides: the manifest it trusts (or ``None``) and the output file that changed."""

    def make(tmp_path, kit):
        from hf_task_distill.files import content_hashes
        from hf_task_distill.pipeline import _NOT_HASHED, Pipeline

        pipeline = Pipeline(
            PipelineConfig.from_dict({"dataset": "digits", "output_dir": str(tmp_path / "run")})
        )
        stage = pathlib.Path(pipeline.stage_dir("teacher"))
        (stage / "model").mkdir(parents=True)
        (stage / "model" / "model.safetensors").write_bytes(b"weights")
        manifest = {"stage": "teacher", "run_id": "r1", "fingerprint": "f", "outputs": {}, "ledger": {}}
        manifest["content"] = content_hashes(stage, exclude=_NOT_HASHED)
        (stage / "manifest.json").write_text(json.dumps(manifest))
        damage(stage)

        def decide():
            found = pipeline.manifest("teacher")
            return found, None if found is None else pipeline._changed_output("teacher", found)

        return decide

    return make


def _manifest_text(text: str):
    return _stage(lambda stage: (stage / "manifest.json").write_text(text))


def _not_complete(result, log):
    manifest, _ = result
    assert manifest is None and "the stage counts as not complete" in log


def _redone_for(path: str):
    def check(result, log):
        manifest, changed = result
        assert manifest is not None and changed == path

    return check


# ---- model folders ----------------------------------------------------------------------------------


def _remote_code_repo(tmp_path, kit):
    folder = tmp_path / "repo"
    repo_with_remote_code(folder)
    return lambda: load_teacher(str(folder))


def _pickle_only_repo(tmp_path, kit):
    folder = tmp_path / "repo"
    model = tiny_dinov2()
    model.config.architectures = ["Dinov2ForImageClassification"]
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return lambda: load_teacher(str(folder))


def _headless_backbone(tmp_path, kit):
    from transformers import Dinov2Model

    Dinov2Model(tiny_dinov2().config).save_pretrained(tmp_path / "backbone")
    return lambda: load_teacher(str(tmp_path / "backbone"))


# ---- images read through datasets' own decoder (issue 15.4) -----------------------------------------


def _image_folder(
    tmp_path, *, labelled: bool, bad: str = "cut.png", good: int = 11, prefix: str = ""
) -> pathlib.Path:
    """An image folder of ``good`` colour PNGs plus one bad file (``bad``, named ``prefix + bad``:
    ``"0-"`` sorts it before the good ones), as users have them."""
    from conftest import save_image_folder

    folder = tmp_path / "folder"
    save_image_folder(make_colour_dataset(good, seed=4), folder, labelled=labelled)
    target = folder / "red" if labelled else folder
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{prefix}{bad}").write_bytes(BAD_FILES[bad])
    return folder


def _student():
    from hf_task_distill import create_student

    return create_student("test_resnet", LABELS, image_size=32)


def _distil_on_folder(tmp_path, kit):
    from hf_task_distill import DistillationTrainer, PairedViews
    from hf_task_distill.data import load_image_dataset

    transfer = load_image_dataset(str(_image_folder(tmp_path, labelled=False)))  # decodes by default
    student = _student()
    views = PairedViews(kit.view, ViewSpec.from_model(student))
    args = distill_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=kit.teacher, args=args, train_dataset=transfer, views=views
    )
    bad_row = transfer.cast_column("image", ImageFeature(decode=False))["image"]
    bad_row = next(i for i, cell in enumerate(bad_row) if cell["path"].endswith("cut.png"))

    def act():
        trainer.train()
        return trainer, bad_row

    return act


def _check_folder_skip(result, log):
    trainer, bad_row = result
    assert trainer.skipped_rows == [bad_row] and trainer.state.global_step == 3  # 11 of 12 rows, batch 4
    assert "skipped 1 transfer-set row(s) whose image could not be decoded" in log


def _evaluate_on_folder(tmp_path, kit):
    from hf_task_distill.evaluation import evaluate_classifier

    task = load_target_task(str(_image_folder(tmp_path, labelled=True)))
    return lambda: evaluate_classifier(_student(), task["train"], task=task)


def _cache_on_folder(tmp_path, kit):
    from hf_task_distill.data import load_image_dataset

    transfer = load_image_dataset(str(_image_folder(tmp_path, labelled=False, bad="notes.jpg")))
    return lambda: kit.build_cache(tmp_path / "cache", dataset=transfer)


def _check_cache_skip(cache, log):
    assert len(cache.skipped) == 1 and "notes.jpg" in cache.skipped[0]["error"] and len(cache) == 11


def _label_budget_names(tmp_path, kit):
    task = load_target_task(make_colour_dataset(12, seed=0), name="colours")
    return lambda: task.with_label_budget(per_class=5, seed=0)


def _check_budget_names(task, log):
    short = log.split("keep all they have:")[1]
    assert re.search(r"\b(red|green|blue|yellow) \(\d\)", short) and not re.search(r"\b\d \(\d\)", short)


def _iterable(tmp_path, kit):
    return kit.transfer.to_iterable_dataset()


def _trainer_with(train_dataset):
    def make(tmp_path, kit):
        from hf_task_distill import DistillationTrainer, PairedViews

        data = train_dataset(tmp_path, kit)
        student = _student()
        views = PairedViews(kit.view, ViewSpec.from_model(student))
        return lambda: DistillationTrainer(
            model=student,
            teacher_model=kit.teacher,
            args=distill_args(tmp_path),
            train_dataset=data,
            views=views,
        )

    return make


def _arguments_with_remove_unused_columns(cls):
    def make(tmp_path, kit):
        return lambda: cls(output_dir=str(tmp_path / "o"), remove_unused_columns=True, report_to="none")

    return make


def _check_columns_kept(args, log):
    assert args.remove_unused_columns is False
    assert "remove_unused_columns=True is turned off: views are rendered from the raw image column" in log


def _retrieval(**config):
    def make(tmp_path, kit):
        from hf_task_distill.retrieval import RetrievalConfig

        return lambda: RetrievalConfig(**config)

    return make


def _teacher_with_other_classes(tmp_path, kit):
    from hf_task_distill.pipeline import Pipeline

    folder = _image_folder(tmp_path, labelled=True, bad="notes.jpg")
    (folder / "red" / "notes.jpg").unlink()
    config = PipelineConfig.from_dict(
        {
            "dataset": str(folder),
            "teacher": "mini-vfm",
            "teacher_strategy": "none",
            "output_dir": str(tmp_path / "r"),
        }
    )
    return lambda: Pipeline(config).run(["teacher"])


def _without_faiss(make):
    def act():
        from unittest import mock

        with mock.patch("importlib.util.find_spec", lambda name, *a, **k: None if name == "faiss" else True):
            return make()

    return act


def _last_batch_of_one(tmp_path, kit):
    from hf_task_distill import DistillationTrainer, PairedViews, create_student

    student = create_student("resnet18", LABELS, image_size=32)  # BatchNorm on a 1 x 1 map at 32 px
    transfer = make_colour_dataset(9, seed=6, labelled=False)  # batches of 8: the last holds 1 image
    views = PairedViews(kit.view, ViewSpec.from_model(student))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=kit.teacher,
        args=distill_args(tmp_path, per_device_train_batch_size=8, num_train_epochs=2),
        train_dataset=transfer,
        eval_dataset=make_colour_dataset(5, seed=7),  # fewer rows than a batch: evaluated whole
        views=views,
    )

    def act():
        trainer.train()
        return trainer

    return act


def _batch_of_one(tmp_path, kit):
    from hf_task_distill import DistillationTrainer, PairedViews, create_student

    student = create_student("resnet18", LABELS, image_size=32)  # BatchNorm on a 1 x 1 map at 32 px
    return DistillationTrainer(
        model=student,
        teacher_model=kit.teacher,
        args=distill_args(tmp_path, per_device_train_batch_size=1, max_steps=1),
        train_dataset=make_colour_dataset(4, seed=6, labelled=False),
        views=PairedViews(kit.view, ViewSpec.from_model(student)),
    ).train


def _check_last_batch_dropped(trainer, log):
    assert trainer.state.global_step == 2  # one full batch per epoch; the single-row batch left out
    assert "leave a last batch of 1, which BatchNorm cannot train on" in log
    assert trainer.evaluate()["eval_accuracy"] >= 0  # evaluation keeps every row (5 < batch size)


def _flat_folder_task(tmp_path, kit):
    folder = _image_folder(tmp_path, labelled=False, bad="empty.png")
    return lambda: load_target_task(str(folder))


# ---- the table --------------------------------------------------------------------------------------

ROW2 = r"train split: image in row 2 \(.*{}\) is unusable"

CASES = [
    # images in a labelled set: an error naming the row and the file
    pytest.param(
        _labelled_file("empty.png"), Raises(ImageDecodeError, ROW2.format("empty.png")), id="image-empty-file"
    ),
    pytest.param(
        _labelled_file("cut.png"),
        Raises(ImageDecodeError, ROW2.format("cut.png") + ".*truncated"),
        id="image-truncated-png",
    ),
    pytest.param(
        _labelled_file("cut.jpg"),
        Raises(ImageDecodeError, ROW2.format("cut.jpg") + ".*(?i:truncated)"),
        id="image-truncated-jpeg",
    ),
    pytest.param(
        _labelled_file("notes.jpg"),
        Raises(ImageDecodeError, ROW2.format("notes.jpg") + ".*cannot identify image file"),
        id="image-text-file-named-jpg",
    ),
    pytest.param(
        _labelled_file("bomb.png"),
        Raises(ImageDecodeError, ROW2.format("bomb.png") + ".*pixel limit \\(a decompression-bomb guard"),
        id="image-decompression-bomb",
    ),
    pytest.param(
        _labelled_file("sliver.png"),
        Raises(ImageDecodeError, ROW2.format("sliver.png") + ".*300 x 2: aspect ratio above 100"),
        id="image-aspect-ratio-150-to-1",
    ),
    pytest.param(
        _labelled_file("gone.png"),
        Raises(ImageDecodeError, ROW2.format("gone.png") + ".*No such file"),
        id="image-missing-file",
    ),
    pytest.param(
        _labelled_image_cells([{"bytes": _encoded("PNG"), "path": None}, None], ImageFeature(decode=False)),
        Raises(ImageDecodeError, r"train split: image in row 1 is unusable: image cell is empty"),
        id="image-cell-none",
    ),
    pytest.param(
        _labelled_image_cells([[1, 2, 3], [4, 5]]),
        Raises(TypeError, r"train split: row 0 of column 'image' is not an image: .*type list"),
        id="image-cell-wrong-type",
    ),
    pytest.param(
        _numeric_image_column,
        Raises(TypeError, r"split 'train': column 'image' holds int64 values, not images"),
        id="image-column-of-numbers",
    ),
    # images in a web pool or transfer set: skipped and counted
    pytest.param(_pool_with_bad_files, Counted(_check_pool_skips), id="pool-unreadable-images-skipped"),
    pytest.param(
        _pool_all_bad,
        Raises(ValueError, r"none of the 3 images embedded in .*pool could be decoded"),
        id="pool-all-unreadable",
    ),
    pytest.param(
        _transfer_with_bad_files, Counted(_check_transfer_skips), id="transfer-unreadable-images-skipped"
    ),
    pytest.param(
        _transfer_all_bad,
        Raises(ValueError, r"none of the 2 transfer images could be decoded"),
        id="transfer-all-unreadable",
    ),
    # labels
    pytest.param(
        _task(
            lambda: DatasetDict(
                {"train": _strings(["cat", "dog", "cat"]), "test": _strings(["dog", "zebra"])}
            )
        ),
        Raises(ValueError, r"1 class\(es\) have no labelled training image: \['zebra'\]"),
        id="label-test-name-unseen-in-train",
    ),
    pytest.param(
        _task(lambda: _strings(["cat", "dog", "zebra"]), label_names=["cat", "dog"]),
        Raises(ValueError, r"split 'train': label\(s\) \['zebra'\] in 'label' are not among"),
        id="label-name-not-in-label-names",
    ),
    pytest.param(
        _task(lambda: _labelled([0, 1, 5]), label_names=["a", "b"]),
        Raises(
            ValueError, r"split 'train': label column 'label' has 1 id\(s\) outside \[0, 2\) \(row 2: 5\)"
        ),
        id="label-id-out-of-range",
    ),
    pytest.param(
        _task(lambda: _labelled([0, -3, 1]), label_names=["a", "b"]),
        Raises(ValueError, r"outside \[0, 2\) \(row 1: -3\)"),
        id="label-id-negative",
    ),
    pytest.param(
        _task(lambda: _labelled([0.0, 1.5, 1.0], dtype="float64"), label_names=["a", "b"]),
        Raises(ValueError, r"split 'train': label column 'label' row 1 holds .*1\.5.*not a class id"),
        id="label-fractional-float",
    ),
    pytest.param(
        _task(
            lambda: _labelled([0.0, float("nan"), 1.0, float("nan")], dtype="float64"), label_names=["a", "b"]
        ),
        Raises(ValueError, r"split 'train': label column 'label' holds NaN in 2 row\(s\) \(rows \[1, 3\]\)"),
        id="label-nan",
    ),
    pytest.param(
        _task(lambda: _labelled([None, -1, None]), label_names=["a", "b"]),
        Raises(ValueError, r"the train split has no labelled rows"),
        id="label-train-split-unlabelled",
    ),
    pytest.param(
        _task(lambda: _labelled([True, False], dtype="bool")),
        Raises(ValueError, r"label column 'label' holds bool values \(e\.g\. True\), not integer class ids"),
        id="label-column-of-booleans",
    ),
    pytest.param(
        _task(lambda: make_colour_dataset(3, seed=0, labelled=False)),
        Raises(ValueError, r"has no label column \(columns: image\); pass label_column="),
        id="label-column-missing",
    ),
    pytest.param(
        _task(lambda: Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})),
        Raises(ValueError, r"has no image column \(columns: text, label\); pass image_column="),
        id="image-column-missing",
    ),
    pytest.param(
        _task(lambda: DatasetDict({"train": _labelled([0, 1]), "test": _labelled([0, 1]).select([])})),
        Raises(ValueError, r"split 'test' is empty"),
        id="split-empty",
    ),
    pytest.param(
        _task(lambda: DatasetDict({"test": _labelled([0, 1])})),
        Raises(ValueError, r"has no 'train' split \(splits: test\)"),
        id="split-train-missing",
    ),
    pytest.param(
        _task(lambda: _strings(["cat", "dog", "eel"]), label_names=["cat", "dog", "cat"]),
        Raises(ValueError, r"label names must be unique; repeated: \['cat'\]"),
        id="label-names-repeated",
    ),
    pytest.param(
        _task(lambda: _labelled([0, 1, 0, 1], dtype=ClassLabel(names=["red", "green", "yellow"]))),
        Raises(ValueError, r"1 class\(es\) have no labelled training image: \['yellow'\]"),
        id="label-class-without-training-image",
    ),
    pytest.param(_budget_above_class_size, Counted(_check_budget), id="label-budget-above-class-size"),
    pytest.param(
        _label_spaces(["red", "green", "blue", "yellow"], ["red", "green", "blue"]),
        Raises(ValueError, r"the teacher predicts 4 classes, the student 3"),
        id="label-space-count-mismatch",
    ),
    pytest.param(
        _label_spaces(["red", "green", "blue"], ["red", "lime", "blue"]),
        Raises(ValueError, r"differ at 1 index\(es\) \(1: teacher 'green' vs student 'lime'\)"),
        id="label-space-name-mismatch",
    ),
    # images that datasets would decode itself: the package's decode policy applies (issue 15.4)
    pytest.param(
        _distil_on_folder, Counted(_check_folder_skip), id="transfer-folder-truncated-png-distilled"
    ),
    pytest.param(_cache_on_folder, Counted(_check_cache_skip), id="transfer-folder-text-file-cached"),
    pytest.param(
        _evaluate_on_folder,
        Raises(ImageDecodeError, r"row \d+ \(.*red/cut\.png\): cannot decode image .*truncated"),
        id="evaluation-split-truncated-png",
    ),
    pytest.param(
        _streamed_pool_with_bad_files,
        Counted(_check_streamed_pool_skips),
        id="pool-streamed-unreadable-skipped",
    ),
    pytest.param(_last_batch_of_one, Counted(_check_last_batch_dropped), id="training-last-batch-of-one"),
    pytest.param(  # second newcomer try: a batch size of 1 stopped inside torch
        _batch_of_one,
        Raises(
            ValueError, r"BatchNorm layer .* batch of 1 image\(s\) .* batch size of at least 2 .*--batch_size"
        ),
        id="training-batch-size-one-batchnorm",
    ),
    *[
        pytest.param(
            _call(lambda v=value: DistillationArguments(output_dir="unused", seed=v, report_to="none")),
            Raises(error, match),
            id=f"training-arguments-seed-{case}",
        )
        for case, value, error, match in [
            ("negative", -1, ValueError, r"seed must be at least 0, got -1"),
            ("fractional", 1.5, TypeError, r"seed must be an integer, got 1.5"),
            ("text", "0", TypeError, r"seed must be an integer, got '0' \(str\)"),
            ("above-2-32", 2**40, ValueError, r"seed must be at most 4294967295"),
        ]
    ],
    pytest.param(
        _call(
            lambda: TeacherFinetuningArguments(
                output_dir="unused", dataloader_num_workers=-1, report_to="none"
            )
        ),
        Raises(ValueError, r"dataloader_num_workers must be at least 0, got -1"),
        id="training-arguments-workers-negative",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", save_steps=0, report_to="none")),
        Raises(ValueError, r"save_steps must be greater than 0, got 0"),
        id="training-arguments-save-steps-zero",
    ),
    pytest.param(
        _teacher_with_other_classes,
        Raises(
            ValueError,
            r"the teacher 'mini-vfm' predicts 269 classes .*the task 'folder' has 4 .*must predict",
        ),
        id="teacher-as-it-is-with-other-classes",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", num_train_epochs="1", report_to="none")),
        Raises(TypeError, r"num_train_epochs must be a number, got '1' \(str\)"),
        id="training-arguments-epochs-as-text",
    ),
    pytest.param(
        _call(lambda: RetrievalTransferSetBuilder("mini-vfmx", per_query_k=2)),
        Raises(ValueError, r"retrieval encoder: unknown model 'mini-vfmx'; did you mean mini-vfm\?"),
        id="retrieval-encoder-typo-of-a-shipped-model",
    ),
    pytest.param(
        _call(_without_faiss(lambda: RetrievalTransferSetBuilder(tiny_encoder(), per_query_k=2))),
        Raises(
            ImportError,
            r"retrieval needs faiss, which is not installed: pip install 'hf-task-distill\[faiss\]'",
        ),
        id="retrieval-without-faiss",
    ),
    # datasets of a type an entry point cannot take (issue 15.7)
    pytest.param(
        _trainer_with(_iterable),
        Raises(TypeError, r"train_dataset is a streamed IterableDataset: .*map-style datasets\.Dataset"),
        id="trainer-iterable-dataset",
    ),
    pytest.param(
        _trainer_with(lambda tmp_path, kit: [kit.transfer[i]["image"] for i in range(3)]),
        Raises(TypeError, r"train_dataset is a list of 3 item\(s\): pass a datasets\.Dataset, e\.g\. "),
        id="trainer-list-of-images",
    ),
    pytest.param(
        _trainer_with(lambda tmp_path, kit: DatasetDict({"train": kit.transfer})),
        Raises(TypeError, r"train_dataset is a DatasetDict of splits \(train\): pass one split"),
        id="trainer-dataset-dict",
    ),
    pytest.param(
        _call(lambda: load_target_task([Image.new("RGB", (4, 4))] * 2)),
        Raises(TypeError, r"the task is a list of 2 item\(s\): pass a datasets\.Dataset"),
        id="task-list-of-images",
    ),
    pytest.param(
        _flat_folder_task,
        Raises(
            ValueError, r"has no class sub-folders, so its images have no labels: put each class's images in"
        ),
        id="task-folder-without-class-folders",
    ),
    # values out of range or of the wrong type, refused where they enter (issue 15.6, 15.7)
    pytest.param(
        _retrieval(budget=0),
        Raises(ValueError, r"budget must be at least 1, got 0"),
        id="retrieval-budget-zero",
    ),
    pytest.param(
        _retrieval(per_query_k=0),
        Raises(ValueError, r"per_query_k must be at least 1, got 0"),
        id="retrieval-per-query-k-zero",
    ),
    pytest.param(
        _retrieval(per_query_k=2.5),
        Raises(TypeError, r"per_query_k must be an integer, got 2\.5 \(float\)"),
        id="retrieval-per-query-k-fractional",
    ),
    pytest.param(
        _retrieval(budget=10, recall_target=1.5),
        Raises(ValueError, r"recall_target must be in \(0, 1\], got 1\.5"),
        id="retrieval-recall-target-above-one",
    ),
    pytest.param(
        _retrieval(budget=10, min_teacher_confidence=-0.1),
        Raises(ValueError, r"min_teacher_confidence must be in \[0, 1\], got -0\.1"),
        id="retrieval-confidence-negative",
    ),
    pytest.param(
        _retrieval(budget=10, memory_budget_gb=0),
        Raises(ValueError, r"memory_budget_gb must be greater than 0, got 0"),
        id="retrieval-memory-budget-zero",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", temperature=float("nan"), report_to="none")),
        Raises(ValueError, r"temperature must be a finite number, got nan"),
        id="distillation-arguments-temperature-nan",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", temperature=float("inf"), report_to="none")),
        Raises(ValueError, r"temperature must be a finite number, got inf"),
        id="distillation-arguments-temperature-inf",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", kd_weight=0.0, report_to="none")),
        Raises(ValueError, r"kd_weight and ce_weight are both 0"),
        id="distillation-arguments-no-loss-term",
    ),
    pytest.param(
        _call(
            lambda: DistillationArguments(
                output_dir="unused", loss_name="function_matching", ce_weight=1.0, report_to="none"
            )
        ),
        Raises(ValueError, r"function_matching uses the teacher as the only target"),
        id="distillation-arguments-loss-rule",
    ),
    pytest.param(
        _arguments_with_remove_unused_columns(DistillationArguments),
        Counted(_check_columns_kept),
        id="distillation-arguments-remove-unused-columns",
    ),
    pytest.param(
        _arguments_with_remove_unused_columns(TeacherFinetuningArguments),
        Counted(_check_columns_kept),
        id="finetuning-arguments-remove-unused-columns",
    ),
    pytest.param(
        _call(lambda: TeacherFinetuningArguments(output_dir="unused", lora_dropout=1.0, report_to="none")),
        Raises(ValueError, r"lora_dropout must be in \[0, 1\), got 1"),
        id="finetuning-arguments-lora-dropout",
    ),
    pytest.param(
        _call(lambda: load_target_task(make_colour_dataset(8, seed=0)).with_label_budget(per_class=1.5)),
        Raises(TypeError, r"per_class must be an integer, got 1\.5 \(float\)"),
        id="label-budget-fractional-per-class",
    ),
    pytest.param(_label_budget_names, Counted(_check_budget_names), id="label-budget-warning-names-classes"),
    pytest.param(
        _call(lambda: TeacherCacheConfig(num_views=2.5)),
        Raises(TypeError, r"num_views must be an integer, got 2\.5"),
        id="cache-config-fractional-views",
    ),
    pytest.param(
        _call(lambda: __import__("hf_task_distill").ViewAugmentation(scale=(0.0, 1.0))),
        Raises(ValueError, r"scale\[0\] must be in \(0, 1\], got 0"),
        id="view-augmentation-zero-scale",
    ),
    # the CLI: mistakes found when the flags are read, not after a stage has run (issue 15.8)
    pytest.param(
        _cli("--student", "resnet18x"),
        ExitsWith(r"--student: unknown timm model 'resnet18x'; did you mean resnet18"),
        id="cli-unknown-timm-student",
    ),
    pytest.param(
        _cli("--teacher", "/no/such/teacher-folder"),
        ExitsWith(r"--teacher: no such folder '/no/such/teacher-folder'"),
        id="cli-teacher-folder-missing",
    ),
    pytest.param(
        _cli("--teacher", "./my-teacher"),
        ExitsWith(r"--teacher: no such folder '\./my-teacher'"),
        id="cli-teacher-relative-folder-missing",
    ),
    pytest.param(
        _cli("--student", "me/cub-student@0123abc"),
        ExitsWith(
            r"--student: 'me/cub-student@0123abc': a revision after '@' is not read here .*"
            r"`hf download me/cub-student --revision 0123abc --local-dir <folder>`\) and pass the folder"
        ),
        id="cli-student-at-revision",
    ),
    pytest.param(
        _cli("--student", "hf-hub:me/cub-student@v2"),
        ExitsWith(r"`hf download me/cub-student --revision v2 --local-dir <folder>`"),
        id="cli-student-hf-hub-at-revision",
    ),
    pytest.param(
        _cli_command("evaluate", "--push_to_hub", "--hub_model_id", "me/s"),
        ExitsWith(
            r"--push_to_hub uploads in the publish stage, which `evaluate` does not run: add it to "
            r"`hf-task-distill run`, or push the finished run with `hf-task-distill push`"
        ),
        id="cli-push-to-hub-without-publish",
    ),
    pytest.param(
        _cli("--per_class", "5", "--fraction", "0.1"),
        ExitsWith(r"--per_class and --fraction are two label budgets: give one"),
        id="cli-two-label-budgets",
    ),
    pytest.param(
        _cli("--per_query_k", "8"),
        ExitsWith(r"--per_query_k applies to --transfer retrieval only \(--transfer is 'task'\)"),
        id="cli-retrieval-flag-without-retrieval",
    ),
    pytest.param(
        _cli("--batch_size", "0"),
        ExitsWith(r"--batch_size must be at least 1, got 0"),
        id="cli-batch-size-zero",
    ),
    pytest.param(
        _cli("--seed", "-1"), ExitsWith(r"--seed must be at least 0, got -1"), id="cli-seed-negative"
    ),
    pytest.param(
        _cli("--teacher_cache_top_k", "3"),
        ExitsWith(r"--teacher_cache_top_k applies to a teacher cache: give --teacher_cache_views K too"),
        id="cli-cache-top-k-without-a-cache",
    ),
    pytest.param(
        _cli("--hub_model_id", "bad id!!"),
        ExitsWith(r"--hub_model_id 'bad id!!' is not a Hub repo id \(owner/name\)"),
        id="cli-hub-model-id-malformed",
    ),
    pytest.param(
        _cli("--transfer", "retreival"),
        ExitsWith(r"--transfer 'retreival' is neither task, retrieval nor random.*did you mean retrieval\?"),
        id="cli-transfer-typo",
    ),
    pytest.param(
        _cli_config_file('{"dataset": "digits", "finetune_epochs": [2]}', ".json"),
        ExitsWith(r"--finetune_epochs takes one value, got list \[2\]"),
        id="cli-config-file-list-for-a-number",
    ),
    pytest.param(
        _cli_with_folder_student("--student_image_size", "48"),
        ExitsWith(r"--student_image_size applies to timm students; '.*dinov2-student' is a dinov2 model"),
        id="cli-student-image-size-for-a-non-timm-folder",
    ),
    pytest.param(
        _cli_with_folder_student("--student_crop_pct", "1.0"),
        ExitsWith(r"--student_crop_pct applies to timm students; '.*dinov2-student' is a dinov2 model"),
        id="cli-student-crop-pct-for-a-non-timm-folder",
    ),
    pytest.param(
        _cli("--student_crop_pct", "0"),
        ExitsWith(r"--student_crop_pct must be in \(0, 1\], got 0"),
        id="cli-student-crop-pct-out-of-range",
    ),
    pytest.param(
        _cli("--student", "segformer-b0", "--student_crop_pct", "1"),
        ExitsWith(r"--student_crop_pct applies to timm students; 'segformer-b0' is a semantic-segmentation"),
        id="cli-student-crop-pct-for-a-segmentation-student",
    ),
    pytest.param(
        _cli("--report_to", "wandbb"),
        ExitsWith(r"--report_to: unknown logger 'wandbb'; did you mean wandb"),
        id="cli-report-to-typo",
    ),
    pytest.param(
        _cli("--report_to", "tensorboard"),
        ExitsWith(r"--report_to: 'tensorboard' is not installed \(pip install tensorboard\)"),
        id="cli-report-to-not-installed",
    ),
    pytest.param(
        _cli_config_file('{"dataset": "digits", "per_class": "five"}', ".json"),
        ExitsWith(r"--per_class must be an integer, got 'five' \(str\)"),
        id="cli-config-file-value-of-the-wrong-type",
    ),
    # configs: the CLI refuses before running anything
    pytest.param(
        _cli("--transfer", "retrieval", "--per_query_k", "8"),
        ExitsWith(r"--transfer retrieval needs --pool"),
        id="cli-retrieval-without-pool",
    ),
    pytest.param(
        _cli("--transfer", "retrieval", "--pool", "pool/", "--per_query_k", "8", "--transfer_budget", "100"),
        ExitsWith(r"needs exactly one of --per_query_k or --transfer_budget"),
        id="cli-per-query-k-and-transfer-budget",
    ),
    pytest.param(
        _cli("--per_class", "many"),
        ExitsWith(r"argument --per_class: invalid int value: 'many' \(--help lists every flag\)"),
        id="cli-flag-of-the-wrong-type",
    ),
    pytest.param(
        _cli("--bf16", "--fp16"), ExitsWith(r"--bf16 and --fp16 are exclusive"), id="cli-bf16-and-fp16"
    ),
    pytest.param(
        _cli("--overwrite_stage", "distil"),
        ExitsWith(r"--overwrite_stage: unknown stage\(s\) \['distil'\]"),
        id="cli-unknown-overwrite-stage",
    ),
    pytest.param(
        _cli("--crop_min_scale", "1.5"),
        ExitsWith(r"--crop_min_scale must be in \(0, 1\], got 1\.5"),
        id="cli-crop-min-scale-out-of-range",
    ),
    pytest.param(
        _cli("--distill_loss", "kl"),
        ExitsWith(r"--distill_loss: unknown loss 'kl'; registered: .*function_matching"),
        id="cli-unknown-distill-loss",
    ),
    pytest.param(
        _cli("--temperature", "0"),
        ExitsWith(r"--temperature must be greater than 0, got 0"),
        id="cli-temperature-zero",
    ),
    pytest.param(
        _cli("--teacher_strategy", "lora-ft"),
        ExitsWith(r"--teacher_strategy must be one of .*got 'lora-ft'"),
        id="cli-unknown-teacher-strategy",
    ),
    pytest.param(
        _cli_config_file('{"dataset": "digits",', ".json"),
        ExitsWith(r"config file .*bad-config\.json is not a mapping of flags to values"),
        id="cli-config-file-not-json",
    ),
    pytest.param(
        _cli_config_file("- dataset\n- digits\n", ".yaml"),
        ExitsWith(r"config file .*bad-config\.yaml is not a mapping of flags to values"),
        id="cli-config-file-yaml-list",
    ),
    pytest.param(
        _call(lambda: PipelineConfig.from_dict({"dataset": "digits", "per_clas": 5})),
        Raises(ValueError, r"unknown setting\(s\) \['per_clas'\]: per_clas \(did you mean per_class\?\)"),
        id="config-unknown-setting",
    ),
    pytest.param(
        _call(lambda: DistillationArguments(output_dir="unused", loss_name="hinton", report_to="none")),
        Raises(ValueError, r"unknown loss_name 'hinton'; registered: "),
        id="distillation-arguments-unknown-loss",
    ),
    pytest.param(
        _call(lambda: TeacherFinetuningArguments(output_dir="unused", layer_decay=1.5, report_to="none")),
        Raises(ValueError, r"layer_decay must be in \(0, 1\], got 1\.5"),
        id="finetuning-arguments-layer-decay",
    ),
    pytest.param(
        _call(lambda: TeacherCacheConfig(num_views=0)),
        Raises(ValueError, r"num_views must be at least 1, got 0"),
        id="cache-config-zero-views",
    ),
    pytest.param(
        _call(lambda: TeacherCacheConfig(precision="fp8")),
        Raises(ValueError, r"precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
        id="cache-config-unknown-precision",
    ),
    pytest.param(
        lambda tmp_path, kit: lambda: kit.build_cache(tmp_path / "c", config=TeacherCacheConfig(top_k=5)),
        Raises(ValueError, r"top_k=5 exceeds the teacher's 4 labels"),
        id="cache-config-top-k-above-classes",
    ),
    # teacher-cache files
    pytest.param(
        _damaged_cache(_write("cache.json", b"\x00\xff{garbage")),
        Raises(ValueError, r"cache\.json is unreadable"),
        id="cache-json-garbage",
    ),
    pytest.param(
        _damaged_cache(_remove("cache.json")),
        Raises(FileNotFoundError, r"is not a complete teacher cache: its build stopped before the end"),
        id="cache-json-missing",
    ),
    pytest.param(
        _damaged_cache(_truncate("shard-00001.safetensors")),
        Raises(ValueError, r"shard-00001\.safetensors is missing or unreadable .*delete .*cache\.json"),
        id="cache-shard-truncated",
    ),
    pytest.param(
        _damaged_cache(_remove("shard-00000.safetensors")),
        Raises(ValueError, r"shard-00000\.safetensors is missing or unreadable \(FileNotFoundError"),
        id="cache-shard-deleted",
    ),
    pytest.param(
        _damaged_cache(_foreign_shard),
        Raises(TeacherCacheMismatch, r"shard-00001\.safetensors belongs to another cache"),
        id="cache-shard-from-other-cache",
    ),
    pytest.param(
        _cache_for_other_teacher,
        Raises(TeacherCacheMismatch, r"built for other inputs .*teacher weights: cache has"),
        id="cache-for-other-teacher",
    ),
    pytest.param(
        _cache_for_other_view_count,
        Raises(
            TeacherCacheMismatch,
            r"holds a teacher cache built for other inputs \(view count: cache has 1, expected 3\)",
        ),
        id="cache-for-other-view-count",
    ),
    # pool-embedding folders
    pytest.param(
        _damaged_embeddings(_write("shard-00001.json", b"{not json")),
        Raises(ValueError, r"embedding shard manifest .*shard-00001\.json is unreadable"),
        id="embeddings-manifest-garbage",
    ),
    pytest.param(
        _damaged_embeddings(_write("shard-00000.json", b'["a", "list"]')),
        Raises(ValueError, r"embedding shard manifest .*shard-00000\.json is unreadable or incomplete"),
        id="embeddings-manifest-not-an-object",
    ),
    pytest.param(
        _damaged_embeddings(_truncate("shard-00001.npz")),
        Raises(ValueError, r"embedding shard .*shard-00001\.npz is missing or unreadable \(BadZipFile"),
        id="embeddings-shard-truncated",
    ),
    pytest.param(
        _embeddings_from_another_encoder,
        Raises(ValueError, r"holds embeddings from encoder 'tiny-dinov2' .*this run uses 'pixels'"),
        id="embeddings-from-another-encoder",
    ),
    pytest.param(
        _embeddings_of_another_dataset,
        Raises(ValueError, r"holds embeddings of another dataset \(fingerprint \w+, this one \w+\)"),
        id="embeddings-of-another-dataset",
    ),
    # checkpoints: an incomplete one is passed over, the older complete one is resumed from
    pytest.param(_checkpoints(None), Counted(_check_checkpoint), id="checkpoint-trainer-state-missing"),
    pytest.param(
        _checkpoints(b'{"epoch": 2.0, "glob'),
        Counted(_check_checkpoint),
        id="checkpoint-trainer-state-garbage",
    ),
    pytest.param(
        _checkpoints(b"null"), Counted(_check_checkpoint), id="checkpoint-trainer-state-not-an-object"
    ),
    # stage manifests: unreadable means "not complete"; outputs that differ from their hashes are redone
    pytest.param(_manifest_text("\x00\xff not json"), Counted(_not_complete), id="manifest-garbage"),
    pytest.param(
        _manifest_text('{"stage": "teacher", "run_'), Counted(_not_complete), id="manifest-truncated"
    ),
    pytest.param(_manifest_text('{"stage": "teacher"}'), Counted(_not_complete), id="manifest-missing-keys"),
    pytest.param(
        _stage(lambda stage: (stage / "model" / "model.safetensors").write_bytes(b"weightz")),
        Counted(_redone_for("model/model.safetensors")),
        id="manifest-output-changed",
    ),
    pytest.param(
        _stage(lambda stage: (stage / "model" / "model.safetensors").unlink()),
        Counted(_redone_for("model/model.safetensors")),
        id="manifest-output-missing",
    ),
    pytest.param(
        _stage(lambda stage: (stage / "model" / "extra.bin").write_bytes(b"?")),
        Counted(_redone_for("model/extra.bin")),
        id="manifest-output-added",
    ),
    # model folders
    pytest.param(_remote_code_repo, Raises(ValueError, r"trust_remote_code=True"), id="model-remote-code"),
    pytest.param(
        _pickle_only_repo,
        Raises(OSError, r"has no safetensors weights.*unpickling can run code"),
        id="model-pickle-only",
    ),
    pytest.param(
        _headless_backbone,
        Raises(ValueError, r"is a backbone without a classification head \(Dinov2Model\)"),
        id="model-backbone-without-head",
    ),
]


# ---- figures ----------------------------------------------------------------------------------------

_RESULTS = {"student, distilled + finetuned": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5}}


def _confusion_not_square(tmp_path, kit):
    from hf_task_distill.plots import confusion_matrix_figure

    return lambda: confusion_matrix_figure(["cat", "dog"], [[3, 1]])


def _confusion_file_garbage(tmp_path, kit):
    from hf_task_distill.plots import write_run_figures

    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "confusion_matrices.json").write_bytes(b'{"labels": ["a", "b"], "matr')
    return lambda: write_run_figures(str(tmp_path), _RESULTS)


def _check_figure_skipped(written, log):
    assert list(written) == ["results"] and os.path.exists(written["results"])
    assert "confusion_matrices.json is unreadable (JSONDecodeError" in log


CASES += [
    pytest.param(
        _confusion_not_square,
        Raises(ValueError, r"a confusion matrix for 2 classes must be 2 x 2, got shape \(1, 2\)"),
        id="figure-confusion-matrix-not-square",
    ),
    pytest.param(_confusion_file_garbage, Counted(_check_figure_skipped), id="figure-confusion-file-garbage"),
]


@pytest.mark.parametrize(("make", "outcome"), CASES)
def test_bad_input(make, outcome, tmp_path, kit, capsys, caplog):
    act = make(tmp_path, kit)
    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error, match=outcome.match):
            act()
    elif isinstance(outcome, ExitsWith):
        capsys.readouterr()
        assert act() == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hf-task-distill: error: "), err
        assert re.search(outcome.match, lines[0]), lines[0]
        assert not (tmp_path / "run").exists()  # refused before any stage ran
    else:
        with caplog.at_level(logging.WARNING):
            result = act()
        outcome.check(result, caplog.text)


def test_a_repaired_cache_index_is_rewritten_from_the_finished_shards(tmp_path, kit):
    """cache.json garbage: the error says to build again, and building again does repair it."""
    folder = kit.copy(kit.cache_dir, tmp_path)
    (folder / "cache.json").write_bytes(b"\x00garbage")
    shards = {
        n: os.stat(os.path.join(folder, n)).st_mtime_ns
        for n in os.listdir(folder)
        if n.endswith(".safetensors")
    }
    cache = kit.build_cache(folder)
    assert len(cache) == 8 and torch.equal(cache.logits(5, 0), TeacherCache(kit.cache_dir).logits(5, 0))
    assert {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in shards} == shards  # no shard redone
