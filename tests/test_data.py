"""The data layer: real data sets, the image-folder loader, augmentation and the device-resident loader."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cuda_sync_debug
from dnas.data import DATASETS, BatchLoader, DataError, load_dataset, split_indices
from dnas.data.augment import cutout, normalize, random_crop, random_hflip
from dnas.data.datasets import channel_stats
from dnas.registry import UnknownNameError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_idx(path, a: np.ndarray) -> None:
    """An idx file of unsigned bytes, gzipped if the name ends in .gz."""
    data = bytes([0, 0, 8, a.ndim]) + b"".join(s.to_bytes(4, "big") for s in a.shape) + a.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(data)


def write_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(rng, w: int, h: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- real data ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist(fashion_mnist_root):
    return load_dataset("fashion-mnist")  # root None: the Debian folder


@pytest.fixture(scope="module")
def cifar10(cifar10_root):
    return load_dataset("cifar10", cifar10_root)


def test_fashion_mnist(fmnist):
    d = fmnist
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_y.bincount().tolist() == [6000] * 10
    assert d.test_y.bincount().tolist() == [1000] * 10
    assert (d.channels, d.image_size, d.num_classes) == (1, (28, 28), 10)
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    mean, std = channel_stats(d.train_x)
    assert mean == pytest.approx(d.mean, abs=1e-3) and std == pytest.approx(d.std, abs=1e-3)


def test_cifar10(cifar10, cifar10_root):
    d = cifar10
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_y.bincount().tolist() == [5000] * 10
    assert d.test_y.bincount().tolist() == [1000] * 10
    assert d.classes == CIFAR10_CLASSES
    assert (d.channels, d.image_size, d.num_classes) == (3, (32, 32), 10)
    # training order is the files' order (DARTS splits by index), rows are R, G, B planes
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        batch5 = pickle.load(f, encoding="latin1")
    assert torch.equal(d.train_x[40000:].flatten(1), torch.from_numpy(np.asarray(batch5["data"])))
    assert d.train_y[40000:].tolist() == batch5["labels"]
    # the stated mean/std are the DARTS values for the original pixels; the JPEG copy is close to them
    mean, std = channel_stats(d.train_x)
    assert mean == pytest.approx(d.mean, abs=5e-3) and std == pytest.approx(d.std, abs=5e-3)


def test_cifar10_root_may_be_the_batches_folder(cifar10, cifar10_root):
    d = load_dataset("cifar10", str(cifar10_root / "cifar-10-batches-py"))
    assert torch.equal(d.train_x, cifar10.train_x) and torch.equal(d.test_y, cifar10.test_y)


def test_cifar100_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    for name, rows in (("train", x[:4]), ("test", x[4:])):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": [3, 1, 4, 1][:len(rows)], "coarse_labels": [0] * len(rows)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    d = load_dataset("cifar100", tmp_path)
    assert d.train_x.shape == (4, 3, 32, 32) and d.test_x.shape == (2, 3, 32, 32)
    assert d.train_y.tolist() == [3, 1, 4, 1] and d.num_classes == 100
    assert torch.equal(d.train_x[1, 2], torch.from_numpy(x[1, 2048:].reshape(32, 32)))  # blue plane


# --- Fashion-MNIST idx parsing ---------------------------------------------------------------------------

def fake_fashion(folder, gz: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)), "train-labels-idx1-ubyte": np.arange(6),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(4)}
    for name, a in arrays.items():
        write_idx(folder / (name + ".gz" if gz else name), a)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    arrays = fake_fashion(tmp_path, gz)
    d = load_dataset("fashion-mnist", tmp_path)
    assert d.train_x.shape == (6, 1, 28, 28) and d.test_x.shape == (4, 1, 28, 28)
    assert torch.equal(d.test_x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))
    assert d.train_y.tolist() == list(range(6)) and d.train_y.dtype == torch.int64


@pytest.mark.parametrize("damage, message", [(lambda b: b"\0\0\x08\x01" + b[4:], "magic"),
                                             (lambda b: b[:-10], "truncated")])
def test_fashion_mnist_damaged_idx(tmp_path, damage, message):
    fake_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_dataset("fashion-mnist", tmp_path)
    assert str(path) in str(e.value)


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path)
    assert str(tmp_path) in str(e.value) and "apt-get install -y dataset-fashion-mnist" in str(e.value)
    assert "t10k-labels-idx1-ubyte" in str(e.value)


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DATASETS.names())
def test_missing_root(tmp_path, name):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="does not exist") as e:
        load_dataset(name, missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_unknown_dataset():
    with pytest.raises(UnknownNameError) as e:
        load_dataset("imagenet")
    for name in ("cifar10", "cifar100", "fashion-mnist", "image-folder"):
        assert name in str(e.value)


def test_cifar10_needs_a_root():
    with pytest.raises(DataError, match="--data"):
        load_dataset("cifar10")


def test_cifar10_empty_root(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
    assert "data_batch_1" in str(e.value)


# --- image-folder ----------------------------------------------------------------------------------------

def test_image_folder_flat(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"{c}/{i}.png": rgb(rng, 6, 5) for c, n in (("dog", 2), ("cat", 3)) for i in range(n)}
    for name, a in images.items():
        write_png(tmp_path / name, a)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset("image-folder", str(tmp_path))
    assert d.classes == ["cat", "dog"] and d.test_x is None and d.test_y is None
    assert d.train_x.shape == (5, 3, 5, 6) and d.train_x.dtype == torch.uint8
    assert sorted(d.train_y.tolist()) == [0, 0, 0, 1, 1]
    pairs = {(name.split("/")[0], a.tobytes()) for name, a in images.items()}
    assert {(d.classes[y], x.permute(1, 2, 0).numpy().tobytes()) for x, y in zip(d.train_x, d.train_y)} == pairs
    x = d.train_x.double() / 255
    assert d.mean == pytest.approx(x.mean((0, 2, 3)).tolist())
    assert d.std == pytest.approx(x.std((0, 2, 3), correction=0).tolist())


def test_image_folder_takes_every_class_into_each_half(tmp_path):
    """Files are read class by class; the training images come in a fixed random order (as CIFAR-10's
    release does), so that DARTS's search halves (split by index) and --subset (the first N) see every class."""
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c", "d"):
        for i in range(10):
            write_png(tmp_path / c / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    d = load_dataset("image-folder", tmp_path)
    assert set(d.train_y[:20].tolist()) == set(d.train_y[20:].tolist()) == {0, 1, 2, 3}
    assert len(set(d.train_y[:8].tolist())) >= 3
    assert torch.equal(load_dataset("image-folder", tmp_path).train_x, d.train_x)  # the same order each time


@pytest.mark.parametrize("layout, message", [
    ({"a": 2, "b": 0}, r"the class folders b hold no images \(images in their subfolders are not read\)"),
    ({"a": 3}, r"one class only \(a\) is nothing to tell apart"),
])
def test_image_folder_of_an_empty_class_or_one_class_is_refused(tmp_path, layout, message):
    for c, n in layout.items():
        (tmp_path / c).mkdir()
        for i in range(n):
            write_png(tmp_path / c / f"{i}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=message):
        load_dataset("image-folder", tmp_path)


def test_image_folder_scales_16_bit_grey_to_8_bits(tmp_path):
    from PIL import Image

    for c, value in (("dark", 257 * 10), ("light", 65535)):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((4, 4), value, np.uint16)).save(tmp_path / c / "0.png")
    d = load_dataset("image-folder", tmp_path)
    assert d.channels == 1 and sorted(d.train_x.flatten(1).max(1).values.tolist()) == [10, 255]


def test_image_folder_train_val_grey(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for c in ("a", "b"):
            for i in range(n):
                write_png(tmp_path / split / c / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    d = load_dataset("image-folder", tmp_path)
    assert d.train_x.shape == (6, 1, 4, 4) and d.test_x.shape == (2, 1, 4, 4)
    assert d.test_y.tolist() == [0, 1] and len(d.mean) == 1
    assert d.mean == pytest.approx([d.train_x.double().mean().item() / 255])  # from the training images only


def test_image_folder_mixed_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "a" / "grey.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    write_png(tmp_path / "b" / "colour.png", rgb(rng, 4, 4))
    d = load_dataset("image-folder", tmp_path)
    assert d.channels == 3
    grey = d.train_x[d.train_y.tolist().index(d.classes.index("a"))]
    assert torch.equal(grey[0], grey[2])  # the grey image, replicated


def test_image_folder_size_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "a" / "0.png", rgb(rng, 6, 5))
    write_png(tmp_path / "b" / "0.png", rgb(rng, 7, 5))
    with pytest.raises(DataError, match="resize") as e:
        load_dataset("image-folder", tmp_path)
    assert str(tmp_path / "b" / "0.png") in str(e.value) and "7x5" in str(e.value) and "6x5" in str(e.value)


def test_image_folder_empty(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_dataset("image-folder", tmp_path)
    write_png(tmp_path / "loose.png", rgb(np.random.default_rng(0), 4, 4))  # images but no class folders
    with pytest.raises(DataError, match="subfolder per class"):
        load_dataset("image-folder", tmp_path)


# --- augmentation ----------------------------------------------------------------------------------------

def test_random_crop_padding_zero_is_identity():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.randint(1, 256, (16, 2, 5, 6), dtype=torch.uint8)  # no zeros, so padding is visible
    p = 2
    out = random_crop(x, p, gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (p,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert len(hits) == 1
        offsets |= set(hits)
    assert len(offsets) > 1  # offsets differ between samples
    assert torch.equal(random_crop(x, p, gen()), out)  # reproducible


def test_random_hflip():
    x = torch.arange(3, dtype=torch.uint8).expand(1000, 1, 2, 3)
    out = random_hflip(x, gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all()
    assert 400 < flipped.sum() < 600


def test_cutout_length_one_zeros_one_pixel():
    out = cutout(torch.ones(50, 3, 6, 6), 1, gen())
    assert ((out == 0).sum((2, 3)) == 1).all()


def test_cutout_zeros_a_clipped_square():
    length, h, w = 4, 8, 9
    x = torch.rand(500, 2, h, w) + 1  # no zeros
    out = cutout(x, length, gen())
    hole = out == 0
    assert torch.equal(hole[:, 0], hole[:, 1])  # same hole in every channel
    assert torch.equal(out[~hole], x[~hole])
    clipped = 0
    for m in hole[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert torch.equal(m, m.any(1)[:, None] & m.any(0)[None, :])  # a rectangle
        for r, size in ((rows, h), (cols, w)):
            assert 1 <= len(r) <= length and torch.equal(r, torch.arange(r[0], r[0] + len(r)))  # contiguous
            touches_border = r[0] == 0 or r[-1] == size - 1
            assert len(r) == length or touches_border
            clipped += len(r) < length
    assert clipped > 0  # centres near the border were drawn too


def test_normalize():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # 1 x 2 x 1 x 2
    out = normalize(x, (0.5, 0.2), (0.5, 0.1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]))


# --- loader ----------------------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def toy(n: int = 103):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen(1)), torch.arange(n)


def test_loader_plain():
    x, y = toy()
    loader = BatchLoader(x, y, 10, MEAN, STD)
    batches = list(loader)
    assert len(loader) == len(batches) == 11
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    xb, yb = batches[0]
    assert xb.shape == (10, 3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.device.type == "cpu"
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), normalize(x, MEAN, STD))


def test_loader_drop_last():
    x, y = toy()
    loader = BatchLoader(x, y, 10, MEAN, STD, shuffle=True, drop_last=True, generator=gen())
    assert len(loader) == 10 and all(len(b[1]) == 10 for b in loader)
    assert len(BatchLoader(x[:5], y[:5], 10, MEAN, STD, drop_last=True)) == 0


def test_loader_shuffles_each_epoch():
    x, y = toy()
    loader = BatchLoader(x, y, 16, MEAN, STD, shuffle=True, generator=gen())
    epochs = [torch.cat([yb for _, yb in loader]) for _ in range(2)]
    for e in epochs:
        assert torch.equal(e.sort().values, y)  # every sample once
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], y)


def test_loader_is_deterministic_given_the_seed():
    x, y = toy()
    a, b, c = (list(BatchLoader(x, y, 16, MEAN, STD, augment=True, cutout=4, shuffle=True, generator=gen(seed)))
               for seed in (0, 0, 1))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


def test_loader_augments():
    x, y = toy()
    plain = normalize(x, MEAN, STD)
    xb, yb = next(iter(BatchLoader(x, y, 103, MEAN, STD, augment=True, cutout=4, generator=gen())))
    assert torch.equal(yb, y) and xb.shape == plain.shape
    assert not torch.equal(xb, plain)
    assert ((xb == 0).flatten(1).sum(1) >= 3).all()  # every image has a cutout hole (at least 1 pixel x 3 channels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    """The randomness comes from the CPU generator, so the same seed gives the same batches on any device."""
    x, y = toy()
    cpu, cuda = (BatchLoader(x, y, 32, MEAN, STD, augment=True, cutout=4, shuffle=True, device=d, generator=gen())
                 for d in ("cpu", "cuda"))
    assert cuda.x.is_cuda and cuda.y.is_cuda
    for (xc, yc), (xg, yg) in zip(cpu, cuda, strict=True):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_never_makes_the_host_wait():
    """The batches' random draws reach the GPU without synchronising it (``device.on_device``): otherwise each
    batch of a search would wait for the step before it, and the GPU for the host."""
    x, y = toy()
    loader = BatchLoader(x, y, 32, MEAN, STD, augment=True, cutout=4, shuffle=True, device="cuda", generator=gen())
    list(loader)  # a first epoch: the lazy set-up of CUDA and of its pinned-memory allocator, outside the check
    torch.cuda.synchronize()
    with cuda_sync_debug("error"):
        batches = list(loader)
    assert len(batches) == len(loader) and all(xb.is_cuda and yb.is_cuda for xb, yb in batches)


def test_split_indices():
    a, b = split_indices(50000, 0.5)
    assert torch.equal(a, torch.arange(25000)) and torch.equal(b, torch.arange(25000, 50000))
    assert [len(t) for t in split_indices(5, 0.5)] == [2, 3]
    assert [len(t) for t in split_indices(5, 1.0)] == [5, 0]
    with pytest.raises(ValueError):
        split_indices(10, 1.5)
