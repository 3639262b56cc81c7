"""The card ``DistillationTrainer.save_model`` writes next to a student: its lineage, its last
evaluation, the work it cost, metadata huggingface_hub accepts, nothing of the machine, none in
checkpoints.

One short run (2 epochs of 48 transfer images in batches of 16, an evaluation of 20 images after
each) whose every local folder sits under a directory named ``MARKER-home-alice``, as in
``tests/test_publishing.py``.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from conftest import (
    LABELS,
    check_card_metadata,
    distill_args,
    make_colour_dataset,
    tiny_dinov2,
    tiny_processor,
)

from hf_task_distill import DistillationTrainer, create_student, load_teacher

MARKER = "MARKER-home-alice"
TRANSFER_ROWS, EVAL_ROWS, EPOCHS = 48, 20, 2


def _trainer(root, **overrides):
    teacher = load_teacher(str(root / "my-teacher"))
    student = create_student("test_resnet", LABELS, image_size=32)
    args = dict(
        output_dir=str(root / "run"),
        save_strategy="epoch",
        eval_strategy="epoch",
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=16,
        distill_loss="kd",  # named: the card says which loss, and the default is function_matching
        temperature=2.0,
    )
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=distill_args(root, **{**args, **overrides}),
        train_dataset=make_colour_dataset(TRANSFER_ROWS, 1, labelled=False),
        eval_dataset=make_colour_dataset(EVAL_ROWS, 2),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp(MARKER)
    tiny_dinov2().save_pretrained(root / "my-teacher")
    tiny_processor().save_pretrained(root / "my-teacher")
    trainer = _trainer(root)
    trainer.train()
    trainer.create_model_card(
        dataset_name="me/colours", transfer_set="me/colour-transfer", tags=["demo"], license="apache-2.0"
    )
    trainer.save_model(str(root / "student"))
    card = (root / "student" / "README.md").read_text(encoding="utf-8")
    return SimpleNamespace(root=root, trainer=trainer, card=card)


def _ledger_rows(card: str) -> dict[str, tuple[str, int]]:
    """``work -> (model, images)`` from the card's compute table."""
    rows = re.findall(r"^\| distill \| ([^|]+) \| ([^|]+) \| ([\d,]+) \|", card, flags=re.MULTILINE)
    return {work: (model, int(images.replace(",", ""))) for work, model, images in rows}


def test_the_saved_student_has_a_card_naming_its_lineage(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run.root / "student" / "README.md")
    assert card.data.base_model is None  # timm's random initialisation: no weights to name
    assert card.data.datasets == ["me/colours", "me/colour-transfer"]
    assert {"hf-task-distill", "knowledge-distillation", "transfer-set:me/colour-transfer", "demo"} <= set(
        card.data.tags
    )
    assert card.data.license == "apache-2.0" and card.data.library_name == "timm"
    assert "# test_resnet-colours-student\n" in card.text  # not the output folder's name
    assert "1. **Teacher**: `my-teacher (local)`." in card.text  # its folder, marked local
    assert "(kd, temperature 2.0) on 48 images of `me/colour-transfer`" in card.text
    # the upload hint leaves out the Trainer's pickled arguments, which name this machine's folders
    assert (
        "--exclude training_args.bin" in card.text and (run.root / "student" / "training_args.bin").is_file()
    )
    assert "`test_resnet` at 32 px, trained from random initialisation" in card.text
    assert "Labels: red, green, blue, yellow" in card.text
    assert "Finetuning" not in card.text  # the pipeline's step, not this trainer's


def test_the_card_reports_the_last_evaluation(run):
    from huggingface_hub import ModelCard

    last = [entry for entry in run.trainer.state.log_history if "eval_accuracy" in entry][-1]
    assert last["epoch"] == EPOCHS  # the second evaluation, not the first
    card = ModelCard.load(run.root / "student" / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "balanced_accuracy", "macro_f1"}
    for metric, result in results.items():
        assert result.metric_value == pytest.approx(last[f"eval_{metric}"])
        assert result.dataset_type == "me/colours" and result.task_type == "image-classification"
    assert f"## Last evaluation ({EVAL_ROWS} images)" in card.text
    assert f"| agreement | {last['eval_agreement']:.4f} |" in card.text
    assert "runtime" not in card.text and "per_second" not in card.text


def test_the_card_ledger_counts_the_work_of_the_trainer(run):
    rows = _ledger_rows(run.card)
    assert rows == {
        "teacher forward": ("my-teacher (local)", EPOCHS * TRANSFER_ROWS),
        "student training": ("test_resnet", EPOCHS * TRANSFER_ROWS),
        "teacher forward (evaluation)": ("my-teacher (local)", EPOCHS * EVAL_ROWS),
        "student forward (evaluation)": ("test_resnet", EPOCHS * EVAL_ROWS),
    }
    from hf_task_distill.ledger import count_flops_per_image

    student = run.trainer.accelerator.unwrap_model(run.trainer.model)
    training = count_flops_per_image(student, 32, training=True)
    line = next(line for line in run.card.splitlines() if "| student training |" in line)
    assert f"| {training / 1e9:.4g} |" in line  # measured on the student at its training size
    total = re.search(
        r"^\| \*\*total\*\* \|.*\| \*\*([\d.e+-]+)\*\* \| ([\d.]+) s \|", run.card, re.MULTILINE
    )
    assert total and float(total.group(1)) > 0 and float(total.group(2)) > 0


def test_the_card_metadata_passes_huggingface_hubs_checks(run):
    metadata = check_card_metadata(run.root / "student" / "README.md")
    assert metadata["model-index"][0]["name"] == "test_resnet-colours-student"


def test_the_card_carries_nothing_of_the_machine(run):
    import getpass

    assert MARKER not in run.card and str(run.root) not in run.card
    assert not re.search(r"(^|[\s`(\"'])/(home|tmp|root|Users)/", run.card, re.MULTILINE)
    user = getpass.getuser()
    if len(user) >= 4:  # "root" and the like are words of the card itself
        assert user not in run.card


def test_checkpoints_have_no_card_and_keep_the_counts(run):
    """A checkpoint is not published: no card in it (writing one would also count FLOPs at every
    save). Its ``trainer_state.json`` keeps the counts so far, which a resumed run takes back."""
    checkpoints = sorted((run.root / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [c.name for c in checkpoints] == ["checkpoint-3", "checkpoint-6"]
    assert not [c for c in checkpoints if (c / "README.md").exists()]
    for epoch, checkpoint in enumerate(checkpoints, start=1):
        state = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
        counts = state["ModelCardCallback"]["attributes"]
        assert counts["student_train_images"] == counts["teacher_train_images"] == epoch * TRANSFER_ROWS
    # create_model_card without output_dir writes to args.output_dir, as transformers' does
    assert (run.root / "run" / "README.md").exists()


def test_a_resumed_run_counts_the_work_since_its_first_step(run):
    trainer = _trainer(run.root, output_dir=str(run.root / "resumed"))
    trainer.train(resume_from_checkpoint=str(run.root / "run" / "checkpoint-3"))
    trainer.save_model(str(run.root / "resumed-student"))
    rows = _ledger_rows((run.root / "resumed-student" / "README.md").read_text())
    assert rows["student training"] == ("test_resnet", EPOCHS * TRANSFER_ROWS)  # 48 restored + 48 new
    assert rows["teacher forward"][1] == EPOCHS * TRANSFER_ROWS


def test_a_card_without_options_names_no_dataset_and_options_given_are_used(tmp_path):
    teacher = tiny_dinov2()  # built in memory: no name to read
    student = create_student("test_resnet", LABELS, image_size=32)
    args = distill_args(tmp_path, max_steps=1, per_device_train_batch_size=8)
    data = make_colour_dataset(8, 3, labelled=False)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        teacher_processor=tiny_processor(),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "plain"))
    metadata = check_card_metadata(tmp_path / "plain" / "README.md")
    assert "model-index" not in metadata and "datasets" not in metadata and "base_model" not in metadata
    plain = (tmp_path / "plain" / "README.md").read_text()
    assert "# test_resnet-distilled-student\n" in plain and "**Teacher**: not named." in plain
    assert _ledger_rows(plain)["student training"] == ("test_resnet", 8)

    card = trainer.create_model_card(
        teacher="facebook/dinov2-small",
        finetuned_from="timm/test_resnet.r160_in1k",
        output_dir=str(tmp_path / "named"),
    )
    metadata = check_card_metadata(tmp_path / "named" / "README.md")
    assert metadata["base_model"] == "timm/test_resnet.r160_in1k"
    assert "teacher:facebook/dinov2-small" in metadata["tags"]
    assert "starting from `timm/test_resnet.r160_in1k`" in card.text
    assert _ledger_rows(card.text)["teacher forward"][0] == "facebook/dinov2-small"


def test_the_student_names_the_weights_it_started_from():
    from hf_task_distill.hub.trainer_card import student_base_model

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    timm_model = {"model_type": "timm_wrapper"}
    assert student_base_model(model(**timm_model, pretrained_cfg={"hf_hub_id": "timm/resnet18.a1_in1k"})) == (
        "timm/resnet18.a1_in1k"
    )
    assert student_base_model(model(**timm_model, pretrained_cfg={"architecture": "resnet18"})) is None
    assert student_base_model(model(model_type="vit", _name_or_path="google/vit-base-patch16-224")) == (
        "google/vit-base-patch16-224"
    )
    assert student_base_model(model(model_type="vit", _name_or_path="/home/bob/vit")) is None
    assert student_base_model(create_student("test_resnet", LABELS, image_size=32)) is None  # from scratch


@pytest.mark.parametrize(
    "options, error",
    [
        ({"dataset_id": "me/x"}, "unknown model card option 'dataset_id'"),
        ({"license": 3}, "model card option 'license' must be a string, got int"),
    ],
)
def test_bad_card_options_are_refused(options, error):
    from hf_task_distill.hub.trainer_card import ModelCardOptions

    with pytest.raises(TypeError, match=re.escape(error)):
        ModelCardOptions().update(**options)
