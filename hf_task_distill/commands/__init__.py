"""Commands of ``hf-task-distill`` that are not pipeline stages; one module each, with
``build_parser()`` and ``run(args) -> str`` (what to print)."""

TOOL_COMMANDS = {
    "convert": "Turn a timm architecture and a weights file (.safetensors, or a tensors-only .pth) "
    "into a model folder every loader reads.",
}
