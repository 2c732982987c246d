"""CRaFT: constrained fine-tuning that keeps a model's representation within a retention budget.

A small library that depends only on torch: feature pooling, retention loss, conflict-aware gradient projection,
the dual variable and the optimizer step that combines them. It knows nothing about Prismatic or LIBERO.
"""

from __future__ import annotations

from craft.cheap import AnchorFeatureCache, constraint_is_slack, retention_subset
from craft.config import ANCHOR_TYPES, CR_TOKEN_MODES, CRaFTConfig, CRaFTConfigError
from craft.dual import DualVariable
from craft.features import (
    TokenMasks,
    deepest_hidden_state_index,
    extract_features,
    masked_mean_pool,
    resolve_layer_index,
)
from craft.gradients import AccumulatedTotals, GradientAccumulator, distributed_world_size
from craft.projection import DEFAULT_PROJECTION_DELTA, ProjectionResult, project_conflicting
from craft.retention import RetentionResult, retention_loss
from craft.similarity import linear_cka
from craft.step import CRaFTStep, CRaFTStepStats

__version__ = "0.1.0"

__all__ = [
    "ANCHOR_TYPES",
    "CR_TOKEN_MODES",
    "DEFAULT_PROJECTION_DELTA",
    "AccumulatedTotals",
    "AnchorFeatureCache",
    "CRaFTConfig",
    "CRaFTConfigError",
    "CRaFTStep",
    "CRaFTStepStats",
    "DualVariable",
    "GradientAccumulator",
    "ProjectionResult",
    "RetentionResult",
    "TokenMasks",
    "constraint_is_slack",
    "deepest_hidden_state_index",
    "distributed_world_size",
    "extract_features",
    "linear_cka",
    "masked_mean_pool",
    "project_conflicting",
    "resolve_layer_index",
    "retention_loss",
    "retention_subset",
]
