"""Model and dataset cards, and publishing to the Hub."""

from .cards import (
    TeacherCardData,
    TransferSetCardData,
    render_teacher_card,
    render_transfer_set_card,
    write_teacher_card,
)

__all__ = [
    "TeacherCardData",
    "TransferSetCardData",
    "render_teacher_card",
    "render_transfer_set_card",
    "write_teacher_card",
]
