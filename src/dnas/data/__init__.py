"""Data: image data sets as in-memory uint8 tensors, a device-resident batch loader with augmentation, and text
corpora for language modelling (``text``)."""
from .datasets import DATASETS, IMAGE_SHAPES, DataError, ImageDataset, load_dataset
from .loader import BatchLoader, memory_format, split_indices
from .text import CORPORA, TextCorpus, batchify, get_batch, is_corpus, load_corpus

__all__ = ["ImageDataset", "DataError", "DATASETS", "IMAGE_SHAPES", "load_dataset", "BatchLoader", "memory_format",
           "split_indices", "CORPORA", "TextCorpus", "batchify", "get_batch", "is_corpus", "load_corpus"]
