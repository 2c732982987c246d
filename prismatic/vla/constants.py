"""Constants of the VLA-Adapter recipe.

Robot constants (action chunk, action and proprio dimensions, normalisation) belong to a dataset: they are chosen
from the dataset registry (`prismatic.vla.datasets.registry`), never from the command line's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

NUM_ACTION_QUERIES = 64  # learned ActionQuery tokens appended after the prompt
# Token id placed at the action-query positions of `input_ids`. Its embedding is always replaced by the learned
# action queries, so any id works; this one (the last row of the padded 151,936-token vocabulary, unused by the
# tokenizer) makes the positions easy to spot.
ACTION_QUERY_TOKEN_ID = 151935


class NormalizationType(str, Enum):
    BOUNDS = "bounds"  # [min, max] -> [-1, 1]
    BOUNDS_Q99 = "bounds_q99"  # [q01, q99] -> [-1, 1], clipped


@dataclass(frozen=True)
class RobotConstants:
    action_chunk: int  # actions predicted per step (current + future)
    action_dim: int
    proprio_dim: int
    normalization: NormalizationType


LIBERO_CONSTANTS = RobotConstants(
    action_chunk=8, action_dim=7, proprio_dim=8, normalization=NormalizationType.BOUNDS_Q99
)
