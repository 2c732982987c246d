"""The Qwen chat prompt VLA-Adapter was trained with.

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\nWhat action should the robot take to
    {instruction}?<|im_end|>\\n<|im_start|>assistant\\n

The instruction is lower-cased; the 64 action-query positions follow the prompt (see `prismatic.models.batch`).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, NUM_ACTION_QUERIES

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


def vla_prompt_ids(tokenizer: PreTrainedTokenizerBase, instruction: str) -> list[int]:
    """Token ids of the prompt followed by the 64 action-query placeholders."""
    ids = tokenizer(build_vla_prompt(instruction), add_special_tokens=True).input_ids
    return [*ids, *([ACTION_QUERY_TOKEN_ID] * NUM_ACTION_QUERIES)]


class PromptIdCache:
    """`vla_prompt_ids` per instruction, tokenised once: a dataset or an evaluation suite has a few dozen
    instructions, while training asks once per sample and rollouts once per policy query."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __call__(self, instruction: str) -> list[int]:
        ids = self._ids.get(instruction)
        if ids is None:
            ids = self._ids[instruction] = vla_prompt_ids(self.tokenizer, instruction)
        return ids
