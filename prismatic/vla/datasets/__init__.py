"""LIBERO RLDS data for VLA training: registry, tf.data stream, and the PyTorch dataset."""

from prismatic.vla.datasets.registry import DATASETS, MIXTURES, DatasetConfig, resolve_mixture, robot_constants
from prismatic.vla.datasets.rlds.stream import StreamConfig
from prismatic.vla.datasets.rlds_dataset import RLDSDataset

__all__ = [
    "DATASETS",
    "MIXTURES",
    "DatasetConfig",
    "RLDSDataset",
    "StreamConfig",
    "resolve_mixture",
    "robot_constants",
]
