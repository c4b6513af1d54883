"""Data: image data sets as in-memory uint8 tensors, and a device-resident batch loader with augmentation."""
from .datasets import DATASETS, DataError, ImageDataset, load_dataset
from .loader import BatchLoader, split_indices

__all__ = ["ImageDataset", "DataError", "DATASETS", "load_dataset", "BatchLoader", "split_indices"]
