"""Up-front checks on image datasets, so bad input fails before the first training step."""

from __future__ import annotations

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "UNLABELLED",
    "check_classes_trained",
    "check_dataset_type",
    "check_image_column",
    "check_images_decode",
    "check_label_ids",
    "check_label_names",
    "class_label_names",
    "label_array",
    "labelled_positions",
]

#: Label id of a row that has no label (the cross-entropy ``ignore_index``). ``-1`` (the
#: ``datasets.ClassLabel`` convention) and ``None`` are read as unlabelled too.
UNLABELLED = -100

#: Mask value of a pixel that carries no label in semantic segmentation (ADE20K's and transformers'
#: ``semantic_loss_ignore_index`` convention). A segmentation task therefore has at most 255 classes.
IGNORE_INDEX = 255


def labelled_positions(labels):
    """Which targets carry a label: ``labels != -100`` for image labels ``[batch]``; for masks
    ``[batch, height, width]`` also ``!= 255`` (:data:`IGNORE_INDEX`).

    Args:
        labels (`torch.Tensor` or `np.ndarray`): image labels (1-D) or masks (2-D and more).

    Returns:
        A boolean tensor/array of the same shape.
    """
    if labels.ndim <= 1:
        return labels != UNLABELLED
    return (labels != UNLABELLED) & (labels != IGNORE_INDEX)


def label_array(dataset, label_column: str, *, nan_is_unlabelled: bool = True) -> np.ndarray:
    """The label column as an int64 array, unlabelled rows (``None``, ``-1``, ``-100``) set to ``UNLABELLED``.

    A float NaN is read as unlabelled too, unless ``nan_is_unlabelled=False`` (a split loaded as a
    labelled task): there NaN is far more often a broken export than a deliberate "no label", so it
    is an error naming the rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.with_format("arrow").select_columns([label_column])[label_column]
    if isinstance(column, pa.Table):
        column = column.column(0)
    if pa.types.is_floating(column.type):
        filled = pc.fill_null(column, float(UNLABELLED))
        values = filled.to_numpy()
        nan_rows = np.isnan(values)
        if nan_rows.any() and not nan_is_unlabelled:
            rows = np.flatnonzero(nan_rows)
            raise ValueError(
                f"label column '{label_column}' holds NaN in {rows.size} row(s) (rows {rows[:5].tolist()}); "
                "mark unlabelled rows with None or -1, or fix the labels"
            )
        not_integral = ~nan_rows & (values != np.round(values))
        if not_integral.any():
            i = int(np.flatnonzero(not_integral)[0])
            raise ValueError(f"label column '{label_column}' row {i} holds {values[i]!r}, not a class id")
        values = np.where(nan_rows, UNLABELLED, values).astype(np.int64)
    elif pa.types.is_integer(column.type):
        values = pc.fill_null(column, UNLABELLED).to_numpy().astype(np.int64)
    else:
        first = column[0].as_py() if len(column) else None
        raise ValueError(
            f"label column '{label_column}' holds {column.type} values (e.g. {first!r}), not integer class ids; "
            "load the data with load_target_task (which encodes string labels) or use Dataset.class_encode_column"
        )
    values[values == -1] = UNLABELLED
    return values


def check_image_column(dataset, image_column: str, where: str = "dataset") -> None:
    """Raise unless ``dataset`` has a column ``image_column`` that may hold images.

    Args:
        dataset (`datasets.Dataset`): the rows.
        image_column (`str`): the column that should hold the images.
        where (`str`, *optional*, defaults to `"dataset"`): names the dataset in the message.

    Raises:
        ValueError: if the column is missing (the message lists the columns).
        TypeError: if its feature is a number or boolean ``Value`` (it can hold no image).
    """
    if image_column not in dataset.column_names:
        raise ValueError(
            f"{where} has no image column '{image_column}' (columns: {', '.join(dataset.column_names) or 'none'}); "
            "pass image_column= to name the column that holds the images"
        )
    # a named column of numbers or booleans can hold no image: say so now, not at the first decode
    feature = (getattr(dataset, "features", None) or {}).get(image_column)
    dtype = getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None
    if dtype is not None and (dtype == "bool" or dtype.startswith(("int", "uint", "float"))):
        raise TypeError(
            f"{where}: column '{image_column}' holds {dtype} values, not images (image files, paths or bytes)"
        )


def check_label_ids(labels: np.ndarray, num_labels: int, label_column: str, where: str = "dataset") -> None:
    """Raise if any labelled row's id is outside ``[0, num_labels)``."""
    labelled = labels != UNLABELLED
    bad = np.flatnonzero(labelled & ((labels < 0) | (labels >= num_labels)))
    if bad.size:
        examples = ", ".join(f"row {i}: {labels[i]}" for i in bad[:5])
        raise ValueError(
            f"{where}: label column '{label_column}' has {bad.size} id(s) outside [0, {num_labels}) "
            f"({examples}); the models have {num_labels} classes"
        )


def check_classes_trained(trained, label_names, task_name: str) -> None:
    """Raise unless every class has at least one labelled training row: a teacher cannot learn a
    class it never sees, and this says so before an epoch of finetuning, not after.

    Args:
        trained (`Iterable[int]`): The class ids that have a labelled training row.
        label_names (`Sequence[str]`): The task's class names, by id.
        task_name (`str`): The task, for the message.

    Raises:
        ValueError: Naming how many classes have no labelled training image, and the first 10.
    """
    trained = set(trained)
    missing = [str(name) for i, name in enumerate(label_names) if i not in trained]
    if missing:
        raise ValueError(
            f"task '{task_name}': {len(missing)} class(es) have no labelled training image: {missing[:10]}; "
            "a teacher cannot learn a class it never sees. Add examples or drop these labels"
        )


def check_images_decode(dataset, image_column: str, where: str = "dataset", batch_size: int = 256) -> None:
    """Decode every image once and raise :class:`~hf_task_distill.data.images.ImageDecodeError`
    naming the first bad row (and its file, when the cell has a path).

    For labelled training sets, which are small by construction (a label budget): a bad file there
    is an error to fix, and finding it before the first step beats failing mid-epoch without a name.
    """
    import datasets

    from .images import ImageDecodeError, image_source, load_rgb_image

    raw = dataset.with_format(None).select_columns([image_column])
    if isinstance(raw.features.get(image_column), datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    row = 0
    for batch in raw.iter(batch_size=batch_size):
        for cell in batch[image_column]:
            try:
                load_rgb_image(cell)
            except ImageDecodeError as err:
                path = image_source(cell)
                named = f" ({path})" if path else ""
                raise ImageDecodeError(f"{where}: image in row {row}{named} is unusable: {err}") from err
            except TypeError as err:  # a column of numbers or lists: name the row, not just the type
                raise TypeError(
                    f"{where}: row {row} of column '{image_column}' is not an image: {err}"
                ) from err
            row += 1


def check_dataset_type(dataset, where: str = "dataset", *, torch_datasets: bool = False) -> None:
    """Raise ``TypeError`` unless ``dataset`` is a map-style ``datasets.Dataset`` (or, with
    ``torch_datasets``, a map-style ``torch.utils.data.Dataset`` with a length), saying what to pass
    instead: one split of a ``DatasetDict``, a ``Dataset`` built from a list, a materialised stream.

    Training reads rows by index (each view is seeded by its row, and a resumed run must find the
    same rows), so a streamed ``IterableDataset`` cannot be used as it is.
    """
    import datasets
    import torch

    kind = type(dataset).__name__
    if isinstance(
        dataset, (datasets.IterableDataset, datasets.IterableDatasetDict, torch.utils.data.IterableDataset)
    ):
        raise TypeError(
            f"{where} is a streamed {kind}: training reads rows by index (views are seeded per row, and a "
            "resumed run must find the same rows), so it needs a map-style datasets.Dataset. Load it without "
            "streaming=True, or materialise the part you need (datasets.Dataset.from_generator)"
        )
    if isinstance(dataset, datasets.DatasetDict):
        raise TypeError(
            f"{where} is a DatasetDict of splits ({', '.join(dataset)}): pass one split, e.g. dataset['train']"
        )
    if isinstance(dataset, (list, tuple, dict)):
        raise TypeError(
            f"{where} is a {kind} of {len(dataset)} item(s): pass a datasets.Dataset, e.g. "
            "datasets.Dataset.from_dict({'image': images}) (images as PIL images or file paths)"
        )
    if isinstance(dataset, datasets.Dataset):
        return
    if torch_datasets and isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"):
        return
    accepted = "a datasets.Dataset" + (
        " or a map-style torch Dataset with a length" if torch_datasets else ""
    )
    raise TypeError(f"{where} is a {kind}: pass {accepted}")


def class_label_names(dataset, label_column: str) -> list[str] | None:
    """The names of a ``ClassLabel`` label column, in id order (``None`` for plain integer labels)."""
    import datasets

    feature = (getattr(dataset, "features", None) or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return [str(n) for n in feature.names]
    return None


def check_label_names(names, where: str = "labels") -> list[str]:
    """``names`` as strings, refused when one is empty, repeated, or differs from another only by
    surrounding whitespace (``"cat"`` and ``"cat "``): each spelling would become a class of its own,
    and the data would be split between them without a word. (Case is significant: ``"A"`` and
    ``"a"`` are different glyphs.)"""
    names = [str(n) for n in names]
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise ValueError(f"{where}: label name at index {empty[0]} is empty ({names[empty[0]]!r})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: label names must be unique; repeated: {repeated[:5]}")
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.strip(), name)
        if other != name:
            raise ValueError(
                f"{where}: label names {other!r} and {name!r} differ only by surrounding whitespace: "
                "they would be two classes; fix the labels"
            )
    return names
