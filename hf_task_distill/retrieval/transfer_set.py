"""A retrieved transfer set on disk, with its dataset card and a contact sheet."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..data.images import ImageDecodeError, load_rgb_image
from ..data.loading import find_image_column, find_label_column
from ..files import write_folder_atomically

__all__ = ["MAX_SHEET_ROWS", "contact_sheet", "save_transfer_set"]


#: Rows of a contact sheet at most: a 1000-class task shows its first classes and says how many more there are.
MAX_SHEET_ROWS = 20


@dataclass(frozen=True)
class _Layout:
    """Where a contact sheet's cells are: a header strip, then per row a class-name column, the
    query and ``per_query`` retrieved images, each thumbnail with a caption strip under it."""

    thumb: int
    per_query: int
    gap: int = 4

    @property
    def caption(self) -> int:
        return max(12, self.thumb // 6)

    @property
    def label_width(self) -> int:
        return max(self.thumb, 120)

    def cell(self, row: int, column: int) -> tuple[int, int]:
        """Top-left corner of the thumbnail of ``row`` (0-based) in ``column`` (0 = the query)."""
        x = self.gap + self.label_width + self.gap + column * (self.thumb + self.gap)
        return x, self.gap + self.caption + row * (self.thumb + self.caption + self.gap)

    def size(self, rows: int, footer: bool) -> tuple[int, int]:
        width = self.cell(0, self.per_query + 1)[0]
        return width, self.cell(max(rows, 1), 0)[1] + (self.caption if footer else 0)


@dataclass
class _SheetRow:
    label: str
    query: int
    neighbours: list[tuple[int, float]]  # (transfer row, cosine score), best first


def _sheet_rows(queries, transfer, label_names, label_column, per_query: int) -> list[_SheetRow]:
    """One row per class (in class order) with the query of that class that owns the most retrieved
    images; unlabelled queries: one row per query that retrieved something."""
    owned: dict[int, list[tuple[int, int, float]]] = {}
    for row, (owner, rank, score) in enumerate(
        zip(transfer["query_index"], transfer["rank"], transfer["score"], strict=True)
    ):
        owned.setdefault(int(owner), []).append((int(rank), row, float(score)))
    best = {q: [(row, score) for _, row, score in sorted(items)[:per_query]] for q, items in owned.items()}
    column = label_column or find_label_column(queries.features)
    if column is None:
        return [_SheetRow(f"query {q}", q, best[q]) for q in sorted(best)]
    feature = queries.features[column]
    names = label_names or getattr(feature, "names", None)
    by_class: dict[Any, list[int]] = {}
    for q, value in enumerate(queries[column]):
        by_class.setdefault(value, []).append(q)
    order = range(len(names)) if names else sorted(by_class, key=str)
    rows = []
    for value in order:
        members = by_class.get(value)
        if not members:
            continue
        query = max(members, key=lambda q: (len(best.get(q, [])), -q))
        label = names[value] if names and isinstance(value, int) and 0 <= value < len(names) else str(value)
        rows.append(_SheetRow(label, query, best.get(query, [])))
    return rows


def _undecoded(dataset):
    """``dataset`` with its image column left as ``{"bytes", "path"}`` cells (and the column name)."""
    import datasets

    column = find_image_column(dataset.features) or "image"
    if isinstance(dataset.features.get(column), datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset, column


def _thumbnail(cell, size: int) -> Image.Image:
    """The cell's image squeezed to ``size`` pixels, or a grey tile when it cannot be decoded."""
    try:
        return load_rgb_image(cell).resize((size, size))
    except ImageDecodeError:
        tile = Image.new("RGB", (size, size), (200, 200, 200))
        ImageDraw.Draw(tile).text(
            (4, size // 2 - 6), "unreadable", fill="black", font=_font(max(10, size // 8))
        )
        return tile


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(
    queries,
    transfer,
    *,
    label_names: list[str] | None = None,
    label_column: str | None = None,
    max_rows: int = MAX_SHEET_ROWS,
    per_query: int = 6,
    thumb: int = 96,
) -> Image.Image:
    """A picture of what retrieval found: one row per class of the labelled ``queries``.

    Each row shows the class name, one query of that class (red frame; the one whose neighbours
    make up most of the transfer set) and the retrieved images it ranked best (``per_query`` at
    most, best first), each with its cosine similarity to the query written under it. Classes
    follow the label order (``label_names``, else the ``ClassLabel`` names of ``label_column``,
    else the first label column's sorted values); a class whose queries kept no image shows its
    query alone. At most ``max_rows`` rows (default :data:`MAX_SHEET_ROWS`): a task with more
    classes shows its first ``max_rows`` and a last line says how many were left out. Unlabelled
    queries get one row per query that kept an image.

    ``transfer`` needs the builder's ``query_index``, ``rank`` and ``score`` columns. Every image is
    decoded from its stored bytes or path by :func:`~hf_task_distill.data.images.load_rgb_image`
    (never by ``datasets``), and one that cannot be decoded is drawn as a grey "unreadable" tile:
    a picture is no reason to fail a run. Returns an RGB image of about
    ``(120 + (per_query + 1) * thumb) x (rows * 1.2 * thumb)`` pixels.
    """
    rows = _sheet_rows(queries, transfer, label_names, label_column, per_query)
    shown, hidden = rows[:max_rows], max(0, len(rows) - max_rows)
    layout = _Layout(thumb, per_query)
    sheet = Image.new("RGB", layout.size(len(shown), footer=bool(hidden)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(layout.caption - 3)
    query_cells, query_column = _undecoded(queries)
    transfer_cells, transfer_column = _undecoded(transfer)
    x0, _ = layout.cell(0, 0)
    draw.text((layout.gap, 2), "class", fill="black", font=font)
    draw.text((x0, 2), "query", fill="black", font=font)
    draw.text(
        (x0 + thumb + layout.gap, 2), "retrieved, best first (cosine similarity)", fill="black", font=font
    )
    for index, row in enumerate(shown):
        x, y = layout.cell(index, 0)
        label = _fit(draw, row.label, _font(layout.caption), layout.label_width)
        draw.text(
            (layout.gap, y + thumb // 2 - layout.caption // 2),
            label,
            fill="black",
            font=_font(layout.caption),
        )
        sheet.paste(_thumbnail(query_cells[row.query][query_column], thumb), (x, y))
        draw.rectangle([x - 1, y - 1, x + thumb, y + thumb], outline="red", width=2)
        draw.text((x, y + thumb + 1), f"query {row.query}", fill="black", font=font)
        if not row.neighbours:
            draw.text(
                (x + thumb + 2 * layout.gap, y + thumb // 2), "nothing retrieved", fill="grey", font=font
            )
        for column, (transfer_row, score) in enumerate(row.neighbours, start=1):
            x, y = layout.cell(index, column)
            sheet.paste(_thumbnail(transfer_cells[transfer_row][transfer_column], thumb), (x, y))
            draw.text((x, y + thumb + 1), f"{score:.3f}", fill="black", font=font)
    if hidden:
        _, y = layout.cell(len(shown), 0)
        draw.text((layout.gap, y), f"... and {hidden} more classes not shown", fill="black", font=font)
    return sheet


def save_transfer_set(
    transfer, output_dir: str | os.PathLike, card_data, sheet: Image.Image | None = None
) -> str:
    """``save_to_disk`` plus ``README.md`` (the dataset card) and ``contact_sheet.png``.

    The folder is written under a temporary name and moved into place whole, so a killed save
    never leaves a folder that ``load_from_disk`` would read as a (shorter) transfer set.
    """
    from ..hub.cards import render_transfer_set_card

    def write(folder: str) -> None:
        transfer.save_to_disk(folder)
        if sheet is not None:
            sheet.save(os.path.join(folder, "contact_sheet.png"))
            card_data.contact_sheet = "contact_sheet.png"
        render_transfer_set_card(card_data).save(os.path.join(folder, "README.md"))

    return write_folder_atomically(output_dir, write)
