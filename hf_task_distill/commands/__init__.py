"""Commands of ``hf-task-distill`` that are not pipeline stages; one module each, with
``build_parser()``, optionally ``parse(argv)`` (default: the parser's) and ``log_folder(args)`` (where
the command's log file goes), and ``run(args) -> str`` (what to print)."""

TOOL_COMMANDS = {
    "compare": "The paper's comparison on your task: labels only, task-agnostic and task-oriented "
    "distillation, generic vs retrieved transfer sets, the teacher, a pretrained student; over seeds, "
    "with paired differences.",
    "convert": "Turn a timm architecture and a weights file (.safetensors, or a tensors-only .pth) "
    "into a model folder every loader reads.",
    "export": "Write a saved student as ONNX (fp32, int8) next to its weights, with parity and CPU "
    "latency measured.",
}
