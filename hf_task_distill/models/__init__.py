"""Teacher and student models."""

from .conversion import CheckpointMismatch, convert_timm_checkpoint, read_state_dict
from .labels import check_label_spaces_match, label_config_kwargs, label_names_of
from .student import create_student, is_timm_architecture
from .teacher import has_classification_head, load_teacher

__all__ = [
    "CheckpointMismatch",
    "convert_timm_checkpoint",
    "read_state_dict",
    "check_label_spaces_match",
    "create_student",
    "has_classification_head",
    "is_timm_architecture",
    "label_config_kwargs",
    "label_names_of",
    "load_teacher",
]
