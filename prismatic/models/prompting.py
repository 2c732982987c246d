"""The Qwen chat prompt VLA-Adapter was trained with.

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\nWhat action should the robot take to
    {instruction}?<|im_end|>\\n<|im_start|>assistant\\n

The instruction is lower-cased; the 64 action-query positions follow the prompt (see the batch transform).
"""

from __future__ import annotations

QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def robot_question(instruction: str) -> str:
    """The user turn for a task instruction."""
    return f"What action should the robot take to {instruction.strip().lower()}?"


def build_vla_prompt(instruction: str, system_prompt: str = QWEN_SYSTEM_PROMPT) -> str:
    """Full prompt text, ending with the assistant header after which the action queries are placed."""
    return (
        f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
        f"<|im_start|>user\n{robot_question(instruction)}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
