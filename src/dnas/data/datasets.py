"""Image classification data sets, read whole into memory as uint8 tensors.

Each loader takes a folder and returns an :class:`ImageDataset`. Nothing is downloaded: when files are missing
the :class:`DataError` says where we looked, what we expected and how to get the data.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..registry import Registry

DATASETS = Registry("dataset")


class DataError(FileNotFoundError):
    """Data missing or unreadable. The message names the path(s) and tells how to get the data."""


@dataclass
class ImageDataset:
    """Train (and optionally test) images as uint8 N x C x H x W with int64 labels, plus per-channel
    mean/std in [0, 1] pixel units for normalisation."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(name: str, root: str | os.PathLike | None = None) -> ImageDataset:
    """Load a registered data set from ``root`` (None: the data set's default place, if it has one)."""
    loader = DATASETS.get(name)
    root = None if root is None else Path(root).expanduser()
    if root is not None and not root.exists():
        raise DataError(f"{name}: data folder {root} does not exist")
    return loader(root)


# --- CIFAR-10 / CIFAR-100, the official python release ---------------------------------------------------

def _cifar_dir(name: str, root: Path | None, folder: str, files: list[str], archive: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds all ``files``."""
    how = (f"download and extract {archive} from https://www.cs.toronto.edu/~kriz/cifar.html "
           f"so that DIR/{folder}/ exists, then pass --data DIR")
    if root is None:
        raise DataError(f"{name}: no data folder given; {how}")
    for d in (root / folder, root):
        if all((d / f).is_file() for f in files):
            return d
    raise DataError(f"{name}: expected {folder}/ with files {', '.join(files)} in {root} "
                    f"(looked in {root / folder} and {root}); {how}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # a damaged pickle can fail in many ways
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


def _cifar_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batches in the given order; rows of 3072 bytes are the R, G, B planes of a 32x32 image."""
    xs, ys = [], []
    for p in paths:
        d = _unpickle(p)
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(d[label_key]):
            raise DataError(f"{p}: expected {len(d[label_key])} rows of 3072 bytes, got an array of shape {x.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


#: (channels, side, classes) of the registered data sets whose images all have one known shape
IMAGE_SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "fashion-mnist": (1, 28, 10)}


@DATASETS.register("cifar10")
def cifar10(root: Path | None) -> ImageDataset:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    d = _cifar_dir("cifar10", root, "cifar-10-batches-py", [*train, "test_batch", "batches.meta"],
                   "cifar-10-python.tar.gz")
    train_x, train_y = _cifar_batches([d / f for f in train], "labels")  # file order kept: DARTS splits by index
    test_x, test_y = _cifar_batches([d / "test_batch"], "labels")
    return ImageDataset("cifar10", train_x, train_y, test_x, test_y,
                        classes=list(_unpickle(d / "batches.meta")["label_names"]),
                        mean=(0.49139968, 0.48215827, 0.44653124), std=(0.24703233, 0.24348505, 0.26158768))


@DATASETS.register("cifar100")
def cifar100(root: Path | None) -> ImageDataset:
    d = _cifar_dir("cifar100", root, "cifar-100-python", ["train", "test", "meta"], "cifar-100-python.tar.gz")
    train_x, train_y = _cifar_batches([d / "train"], "fine_labels")
    test_x, test_y = _cifar_batches([d / "test"], "fine_labels")
    return ImageDataset("cifar100", train_x, train_y, test_x, test_y,
                        classes=list(_unpickle(d / "meta")["fine_label_names"]),
                        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


# --- Fashion-MNIST, idx files ---------------------------------------------------------------------------

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped if it ends in .gz): magic 0x0000 08 <ndim>, ndim big-endian
    uint32 sizes, then the bytes."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    header = 4 + 4 * ndim
    magic = 0x0800 | ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an idx file of {ndim}-d unsigned bytes "
                        f"(magic {raw[:4].hex()}, expected {magic:08x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path}: header says shape {shape} ({math.prod(shape)} bytes) "
                        f"but the file holds {len(raw) - header}; truncated or damaged")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: Path | None) -> ImageDataset:
    root = root or FASHION_MNIST_DIR
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = []
    for n in names:
        found = [p for p in (root / n, root / f"{n}.gz") if p.is_file()]
        if not found:
            raise DataError(f"fashion-mnist: {n}(.gz) not found in {root}; expected the four idx files "
                            f"{', '.join(names)} (gzipped or not). Install them with "
                            f"`apt-get install -y dataset-fashion-mnist` (into {FASHION_MNIST_DIR}) "
                            f"or pass --data DIR holding them")
        paths.append(found[0])
    train_x, train_y, test_x, test_y = (_read_idx(p, d) for p, d in zip(paths, (3, 1, 3, 1)))
    for x, y, p in ((train_x, train_y, paths[1]), (test_x, test_y, paths[3])):
        if len(x) != len(y):
            raise DataError(f"{p}: {len(y)} labels for {len(x)} images")
    return ImageDataset("fashion-mnist", torch.from_numpy(train_x)[:, None], torch.from_numpy(train_y).long(),
                        torch.from_numpy(test_x)[:, None], torch.from_numpy(test_y).long(),
                        classes=list(FASHION_MNIST_CLASSES), mean=(0.2860,), std=(0.3530,))


# --- a folder of images, one subfolder per class ----------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``folder/<class>/`` with their class indices. ``classes`` fixes the class list
    (a test folder must use the training classes)."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    training = classes is None
    if training:
        classes = found
    elif set(found) - set(classes):
        raise DataError(f"{folder}: class folders {sorted(set(found) - set(classes))} are not training classes")
    files, labels, empty = [], [], []
    for i, c in enumerate(classes):
        if (folder / c).is_dir():
            imgs = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += imgs
            labels += [i] * len(imgs)
            empty += [] if imgs else [c]
    if not files:
        raise DataError(f"image-folder: no images in {folder}; expected one subfolder per class holding "
                        f"image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if training and (empty or len(classes) < 2):
        what = (f"the class folders {', '.join(empty)} hold no images (images in their subfolders are not read)"
                if empty else f"one class only ({classes[0]}) is nothing to tell apart")
        raise DataError(f"image-folder: {folder}: {what}; expected two or more subfolders, one per class, each "
                        f"holding its image files")
    return files, labels, classes


def _read_images(files: list[Path]) -> torch.Tensor:
    """Decode to uint8 N x C x H x W: greyscale if every image is, else RGB. All sizes must agree."""
    from PIL import Image  # only this loader needs Pillow

    size, first, modes = None, None, set()
    for p in files:  # opening reads only the header
        try:
            with Image.open(p) as im:
                s, m = im.size, im.mode
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: cannot read image ({e})") from e
        if size is None:
            size, first = s, p
        elif s != size:
            raise DataError(f"image-folder: {p} is {s[0]}x{s[1]} but {first} is {size[0]}x{size[1]} (width x height); "
                            f"all images must have the same size, resize them first")
        modes.add(m)
    mode = "L" if modes <= GREY_MODES else "RGB"
    arrays = []
    for p in files:
        with Image.open(p) as im:
            arrays.append(np.asarray(_eight_bits(im, p).convert(mode)))
    x = np.stack(arrays)
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _eight_bits(im, path: Path):
    """``im`` with 8 bits a channel: 16-bit greyscale scaled down (65535 -> 255; Pillow's own conversion clips
    it to 255), floating-point pixels refused."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        x = np.asarray(im).astype(np.int64)
        if x.min() < 0 or x.max() > 65535:
            raise DataError(f"{path}: pixels of {x.min()}..{x.max()}, not the 0..65535 of 16-bit images; give "
                            f"8- or 16-bit images")
        return Image.fromarray(((x * 255 + 32767) // 65535).astype(np.uint8))
    if im.mode == "F":
        raise DataError(f"{path}: floating-point pixels; give 8- or 16-bit images")
    return im


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, from a 256-bin histogram (exact, and no
    float copy of the whole set)."""
    v = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].flatten(), minlength=256).double()
        p /= p.sum()
        m = (p * v).sum()
        mean.append(m.item())
        std.append((p * (v - m) ** 2).sum().sqrt().item())
    return tuple(mean), tuple(std)


@DATASETS.register("image-folder")
def image_folder(root: Path | None) -> ImageDataset:
    """``root/<class>/*.png``, or ``root/train/<class>/...`` with an optional ``root/val`` (or ``root/test``).
    The training images in a fixed random order (seed 0); 16-bit greyscale scaled to 8 bits."""
    if root is None:
        raise DataError("image-folder: no data folder given; pass --data DIR with one subfolder per class "
                        "(or DIR/train/<class>/ and DIR/val/<class>/)")
    if (root / "train").is_dir():
        train_dir = root / "train"
        test_dir = next((d for d in (root / "val", root / "test") if d.is_dir()), None)
    else:
        train_dir, test_dir = root, None
    train_files, train_y, classes = _scan(train_dir)
    order = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(0)).tolist()
    train_files, train_y = [train_files[i] for i in order], [train_y[i] for i in order]  # as CIFAR-10's release
    # is: a split or subset by index (DARTS's search halves, --subset) takes every class
    test_files, test_y, _ = _scan(test_dir, classes) if test_dir else ([], [], classes)
    x = _read_images(train_files + test_files)
    train_x, test_x = x[:len(train_files)], x[len(train_files):]
    mean, std = channel_stats(train_x)
    return ImageDataset("image-folder", train_x, torch.tensor(train_y, dtype=torch.int64),
                        test_x if test_dir else None, torch.tensor(test_y, dtype=torch.int64) if test_dir else None,
                        classes=classes, mean=mean, std=std)
