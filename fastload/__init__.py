"""fastload: a faster, safer drop-in for ``torch.utils.data.DataLoader``."""

from torch.utils.data import get_worker_info

from .collate import PadCollator, VoxelCollator, default_collate, default_convert
from .samplers import (
    BucketBatchSampler,
    DistributedBatchSampler,
    DistributedBucketBatchSampler,
    DistributedSampler,
    DistributedSamplerWrapper,
    RandomSampler,
    SequentialSampler,
)
from .iterable_shard import DistributedIterableDataset
from .loader import DataLoader
from .pool import WorkerDiedError
from .sample_errors import SampleFailure, TooManySampleErrors
from . import telemetry, text

__all__ = [
    "BucketBatchSampler",
    "DataLoader",
    "DistributedBatchSampler",
    "DistributedBucketBatchSampler",
    "DistributedIterableDataset",
    "DistributedSampler",
    "DistributedSamplerWrapper",
    "PadCollator",
    "RandomSampler",
    "SampleFailure",
    "SequentialSampler",
    "TooManySampleErrors",
    "VoxelCollator",
    "WorkerDiedError",
    "default_collate",
    "default_convert",
    "get_worker_info",
    "telemetry",
    "text",
]
__version__ = "0.1.0"
