"""A retrieved transfer set on disk or on the Hub, with its dataset card and a contact sheet."""

from __future__ import annotations

import io
import os

from PIL import Image, ImageDraw

from ..data.images import load_rgb_image
from ..data.loading import find_image_column
from ..files import write_folder_atomically

__all__ = ["contact_sheet", "push_transfer_set", "save_transfer_set"]


def contact_sheet(
    queries, transfer, *, num_queries: int = 4, per_query: int = 6, thumb: int = 96
) -> Image.Image:
    """One row per query: the query (red frame) and its best-ranked retrieved images, for a quick look."""
    q_col = find_image_column(queries.features) or "image"
    t_col = find_image_column(transfer.features) or "image"
    query_ids = sorted(set(transfer["query_index"]))[:num_queries]
    sheet = Image.new(
        "RGB", ((per_query + 1) * (thumb + 4) + 4, max(1, len(query_ids)) * (thumb + 4) + 4), "white"
    )
    draw = ImageDraw.Draw(sheet)
    ranks, owners = transfer["rank"], transfer["query_index"]
    for row, query in enumerate(query_ids):
        y = 4 + row * (thumb + 4)
        sheet.paste(load_rgb_image(queries[int(query)][q_col]).resize((thumb, thumb)), (4, y))
        draw.rectangle([3, y - 1, 4 + thumb, y + thumb], outline="red", width=2)
        mine = sorted((r, i) for i, (r, o) in enumerate(zip(ranks, owners, strict=True)) if o == query)[
            :per_query
        ]
        for col, (_, i) in enumerate(mine, start=1):
            sheet.paste(load_rgb_image(transfer[i][t_col]).resize((thumb, thumb)), (4 + col * (thumb + 4), y))
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


def push_transfer_set(
    transfer, repo_id: str, card_data, sheet: Image.Image | None = None, *, private=None, token=None
):
    """Push the rows, then the card and the contact sheet as their own commits.

    ``Dataset.push_to_hub`` writes a README with YAML metadata only, so the card is pushed after it.
    The token is resolved by huggingface_hub (login, ``HF_TOKEN``); it is never written anywhere.
    """
    from huggingface_hub import HfApi

    from ..hub.cards import render_transfer_set_card

    transfer.push_to_hub(repo_id, private=private, token=token)
    api = HfApi(token=token)
    if sheet is not None:
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        api.upload_file(
            path_or_fileobj=buffer.getvalue(),
            path_in_repo="contact_sheet.png",
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="Add contact sheet",
        )
        card_data.contact_sheet = "contact_sheet.png"
    render_transfer_set_card(card_data).push_to_hub(repo_id, repo_type="dataset", token=token)
    return repo_id
