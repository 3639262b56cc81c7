"""Model and dataset cards, and publishing to the Hub."""

from .cards import (
    StudentCardData,
    TeacherCardData,
    TransferSetCardData,
    render_student_card,
    render_teacher_card,
    render_transfer_set_card,
    write_teacher_card,
)

__all__ = [
    "StudentCardData",
    "TeacherCardData",
    "TransferSetCardData",
    "render_student_card",
    "render_teacher_card",
    "render_transfer_set_card",
    "write_teacher_card",
]
