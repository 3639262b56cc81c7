"""Model and dataset cards, and publishing to the Hub."""

from .cards import TeacherCardData, render_teacher_card, write_teacher_card

__all__ = ["TeacherCardData", "render_teacher_card", "write_teacher_card"]
