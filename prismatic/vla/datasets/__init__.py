"""LIBERO RLDS data for VLA training: registry, tf.data stream, and the PyTorch dataset / collator."""

from prismatic.vla.datasets.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSDataset
from prismatic.vla.datasets.registry import DATASETS, MIXTURES, DatasetConfig, resolve_mixture, robot_constants

__all__ = [
    "DATASETS",
    "MIXTURES",
    "DatasetConfig",
    "PaddedCollatorForActionPrediction",
    "RLDSBatchTransform",
    "RLDSDataset",
    "resolve_mixture",
    "robot_constants",
]
