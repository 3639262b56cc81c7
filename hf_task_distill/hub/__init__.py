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
from .names import public_name
from .publish import HubUploadError

__all__ = [
    "HubUploadError",
    "StudentCardData",
    "TeacherCardData",
    "TransferSetCardData",
    "public_name",
    "render_student_card",
    "render_teacher_card",
    "render_transfer_set_card",
    "write_teacher_card",
]
