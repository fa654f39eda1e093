"""The data loaders, on small files written here in each data set's own format."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddim_lib.data import IMAGE_SIZE, load_dataset


# ---- digits ----------------------------------------------------------------------------------------
def test_digits_are_sklearns_images_mapped_to_unit_range():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    raw = torch.from_numpy(load_digits().images)
    assert data.shape == (1797, 1, 8, 8) and data.dtype == torch.float32
    # 0..16 -> [-1, 1]: x / 8 - 1, exact in float32 for these integers.
    assert torch.equal(data[:, 0], (raw / 8 - 1).float())
    assert data.min() == -1 and data.max() == 1


def test_subsets():
    first = load_dataset("digits", n=10)
    assert torch.equal(first, load_dataset("digits")[:10])
    a = load_dataset("digits", n=50, generator=torch.Generator().manual_seed(3))
    b = load_dataset("digits", n=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, load_dataset("digits", n=50))
    with pytest.raises(ValueError, match="exceeds"):
        load_dataset("digits", n=5000)
    with pytest.raises(ValueError, match="positive"):
        load_dataset("digits", n=0)


def test_toys_and_unknown_names():
    pts = load_dataset("two_moons", n=100, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (100, 2)
    with pytest.raises(ValueError, match="known: digits"):
        load_dataset("mnist")


# ---- CIFAR-10 python batches ------------------------------------------------------------------------
def write_cifar_batch(path, n, seed):
    """A batch in the official format: a Python-2 style pickle of a dict with bytes keys."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"fake", b"labels": list(range(n)), b"data": pixels,
             b"filenames": [b"x.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return pixels


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [write_cifar_batch(folder / f"data_batch_{i}", 3, seed=i) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", 2, seed=0)
    return tmp_path, batches, test


def test_cifar10_layout_and_values(cifar_root):
    root, batches, test = cifar_root
    data = load_dataset("cifar10", root)
    assert data.shape == (15, 3, 32, 32) and data.dtype == torch.float32
    # Row-major CHW: the first 1024 bytes are red, then green, then blue; 0..255 -> [-1, 1].
    raw = np.concatenate(batches)
    for c, i, j, n in [(0, 0, 0, 0), (1, 5, 7, 4), (2, 31, 31, 14), (0, 17, 3, 9)]:
        assert data[n, c, i, j].item() == pytest.approx(raw[n, c * 1024 + i * 32 + j] / 127.5 - 1, abs=1e-7)
    assert torch.equal(load_dataset("cifar10", root / "cifar-10-batches-py"), data)   # root may be the folder itself
    assert load_dataset("cifar10-test", root).shape == (2, 3, 32, 32)


def test_cifar10_missing_files_are_named(cifar_root, tmp_path):
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="data_batch_3.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", root)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs a data root"):
        load_dataset("cifar10")


def test_cifar10_damaged_batch_is_reported(cifar_root):
    root, _, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR-10 python batch"):
        load_dataset("cifar10", root)


class _RunsCode:
    """Unpickling this with the plain pickle module would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("payload", ["in the data", "as the whole batch", "in the labels"])
def test_cifar10_batches_never_execute_code(cifar_root, tmp_path, payload):
    root, _, _ = cifar_root
    trap = tmp_path / "pwned"
    good = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    batch = {"in the data": {**good, b"data": _RunsCode(trap)}, "as the whole batch": _RunsCode(trap),
             "in the labels": {**good, b"labels": [_RunsCode(trap)]}}[payload]
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 python batch \(UnpicklingError: refused"):
        load_dataset("cifar10", root)
    assert not trap.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar10_restricted_unpickler_reads_every_pickle_protocol(cifar_root, protocol):
    root, batches, _ = cifar_root
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": [0, 1, 2], b"data": batches[0], b"filenames": [b"a"] * 3}, f,
                    protocol=protocol)
    x = load_dataset("cifar10", root)
    np.testing.assert_array_equal(((x[:3].numpy() + 1) * 127.5).round().reshape(3, -1), batches[0])


def test_cifar10_wrong_contents_are_named(cifar_root):
    root, _, _ = cifar_root
    folder = root / "cifar-10-batches-py"
    for content, match in [({b"labels": [1]}, "b'data' entry"), ({b"data": "pixels"}, "must be an array"),
                           ({b"data": np.zeros((2, 3072), np.float32)}, "uint8"), ([1, 2], "b'data' entry")]:
        with open(folder / "data_batch_4", "wb") as f:
            pickle.dump(content, f, protocol=2)
        with pytest.raises(ValueError, match=match):
            load_dataset("cifar10", root)


# ---- image folders ------------------------------------------------------------------------------------
def test_folder_centre_crops_and_resizes(tmp_path):
    # 120 x 60: red 30-pixel bands left and right of a blue 60 x 60 centre. The centre crop keeps blue only.
    img = np.zeros((60, 120, 3), dtype=np.uint8)
    img[:, :30] = img[:, 90:] = (255, 0, 0)
    img[:, 30:90] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(np.full((80, 80, 3), 51, dtype=np.uint8)).save(tmp_path / "b.jpg", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset("folder", tmp_path)
    assert data.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and data.dtype == torch.float32
    assert torch.equal(data[0, 2], torch.ones(64, 64)) and torch.equal(data[0, :2], -torch.ones(2, 64, 64))
    # JPEG of a flat grey keeps it to within one level: 51 / 127.5 - 1 = -0.6.
    assert (data[1] - (51 / 127.5 - 1)).abs().max() <= 1 / 127.5 + 1e-6


def test_celeba_uses_ddims_face_crop_on_aligned_images(tmp_path):
    # img_align_celeba is 178 x 218; DDIM crops the 128 x 128 box with corners (25, 57) and (153, 185).
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    img[57:185, 25:153] = 200
    Image.fromarray(img).save(tmp_path / "000001.png")
    data = load_dataset("celeba", tmp_path)
    assert data.shape == (1, 3, 64, 64)
    assert torch.allclose(data, torch.full_like(data, 200 / 127.5 - 1))


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images"):
        load_dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="CelebA"):
        load_dataset("celeba", tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_dataset("folder", tmp_path)


def write_bomb_png(path, side=20000):
    """A PNG header claiming side x side pixels (400 Mpixel by default) in 99 bytes: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1)))
                           + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_with_one_line(tmp_path):
    write_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="refused image .*bomb.png.*decompression bomb") as info:
        load_dataset("folder", tmp_path)
    assert "\n" not in str(info.value)
