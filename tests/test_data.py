"""Dataset readers: real MNIST, and every format round-tripped through files written in the
official layout (tests/formats.py). Corrupt or missing files are UserErrors naming the file."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ganops.data as data
from ganops.data import idx
from ganops.errors import UserError
from ganops.spec.models import DATASETS as SPEC_DATASETS
from ganops.spec.models import DataSpec
from tests.formats import (
    idx_bytes,
    random_images,
    random_labels,
    write_cifar10,
    write_idx,
    write_image_folder,
    write_svhn,
)

# The official MNIST test split: images per digit, and pixel statistics on 0-255 computed
# from the published files (mean 0.1325 and std 0.3105 on 0-1; the often-quoted 0.1307 /
# 0.3081 are the train split's).
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TEST_MEAN = 33.7912
MNIST_TEST_STD = 79.1725


def spec(dataset: str, root: Path | None = None, **kw: object) -> DataSpec:
    return DataSpec(dataset=dataset, root=str(root) if root is not None else None, **kw)


@pytest.fixture(scope="module")
def mnist_test(mnist_root: Path) -> data.ArrayDataset:
    return data.load(spec("mnist", mnist_root, split="test"))


# --- real MNIST --------------------------------------------------------------------------


def test_mnist_test_split_has_10000_labelled_28x28_digits(mnist_test: data.ArrayDataset) -> None:
    assert mnist_test.images.shape == (10_000, 1, 28, 28)
    assert mnist_test.images.dtype == np.uint8 and mnist_test.images.flags.c_contiguous
    assert mnist_test.labels is not None and mnist_test.labels.dtype == np.int64
    assert np.bincount(mnist_test.labels).tolist() == MNIST_TEST_CLASS_COUNTS
    assert mnist_test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist_test.info == data.ImageInfo((1, 28, 28), 10, 10_000, [str(d) for d in range(10)])


def test_mnist_test_pixels_have_the_published_statistics(mnist_test: data.ArrayDataset) -> None:
    pixels = mnist_test.images.astype(np.float64)
    assert pixels.mean() == pytest.approx(MNIST_TEST_MEAN, abs=0.01)
    assert pixels.std() == pytest.approx(MNIST_TEST_STD, abs=0.01)
    assert mnist_test.images.min() == 0 and mnist_test.images.max() == 255
    # The digits are centred: the border is blank in every image.
    assert mnist_test.images[:, :, 0, :].max() == 0


def test_mnist_probe_gives_shape_classes_and_count(mnist_root: Path) -> None:
    info = data.probe(spec("mnist", mnist_root, split="test"))
    assert info == data.ImageInfo((1, 28, 28), 10, 10_000, [str(d) for d in range(10)])


def test_mnist_train_split_on_a_test_only_directory_says_the_test_split_is_there(mnist_root: Path) -> None:
    for call in (data.probe, data.load):
        with pytest.raises(UserError) as e:
            call(spec("mnist", mnist_root, split="train"))
        msg = str(e.value)
        assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
        assert str(mnist_root) in msg
        assert "found the test split (t10k-images-idx3-ubyte.gz" in msg
        assert "spec.data.split=test" in msg


def test_limit_keeps_the_first_images(mnist_root: Path, mnist_test: data.ArrayDataset) -> None:
    s = spec("mnist", mnist_root, split="test", limit=100)
    ds = data.load(s)
    assert ds.images.shape == (100, 1, 28, 28) and ds.info.num_images == 100
    np.testing.assert_array_equal(ds.images, mnist_test.images[:100])
    np.testing.assert_array_equal(ds.labels, mnist_test.labels[:100])
    assert data.probe(s).num_images == 100


def test_mnist_in_torchvision_layout_is_found(tmp_path: Path, mnist_root: Path, mnist_test: data.ArrayDataset) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(mnist_root / name)
    ds = data.load(spec("mnist", tmp_path, split="test", limit=50))
    np.testing.assert_array_equal(ds.images, mnist_test.images[:50])


def test_probe_reads_only_the_idx_header(tmp_path: Path, mnist_root: Path) -> None:
    # The first 64 KiB of the real gzip: a valid header, most of the payload missing.
    # probe must not notice (it reads 16 bytes); load must.
    shutil.copy(mnist_root / "t10k-labels-idx1-ubyte.gz", tmp_path)
    head = (mnist_root / "t10k-images-idx3-ubyte.gz").read_bytes()[: 64 * 1024]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(head)
    s = spec("mnist", tmp_path, split="test")
    assert data.probe(s).num_images == 10_000
    with pytest.raises(UserError, match="truncated gzip"):
        data.load(s)


# --- round trips through the official formats ----------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_files_round_trip_exact_pixels_and_labels(tmp_path: Path, gz: bool, split: str) -> None:
    images, labels = random_images(7, (28, 28)), random_labels(7)
    write_idx(tmp_path, split, images, labels, gz=gz)
    ds = data.load(spec("mnist", tmp_path, split=split))
    np.testing.assert_array_equal(ds.images, images[:, None])
    np.testing.assert_array_equal(ds.labels, labels)
    assert data.probe(spec("mnist", tmp_path, split=split)) == ds.info


def test_raw_idx_is_preferred_when_both_raw_and_gzipped_exist(tmp_path: Path) -> None:
    write_idx(tmp_path, "train", random_images(3, (28, 28), seed=1), random_labels(3), gz=True)
    raw = random_images(3, (28, 28), seed=2)
    write_idx(tmp_path, "train", raw, random_labels(3), gz=False)
    np.testing.assert_array_equal(data.load(spec("mnist", tmp_path)).images[:, 0], raw)


def test_fashion_mnist_reads_idx_with_its_class_names(tmp_path: Path) -> None:
    images, labels = random_images(5, (28, 28)), random_labels(5)
    write_idx(tmp_path / "FashionMNIST" / "raw", "train", images, labels)
    ds = data.load(spec("fashion_mnist", tmp_path))
    np.testing.assert_array_equal(ds.images[:, 0], images)
    assert ds.info.class_names is not None and ds.info.class_names[0] == "T-shirt/top"
    assert ds.info.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("tar", [False, True], ids=["directory", "tarball"])
def test_cifar10_batches_round_trip_exact_pixels_labels_and_names(tmp_path: Path, tar: bool) -> None:
    written = write_cifar10(tmp_path, n_per_batch=3, tar=tar)
    for split, n in (("train", 15), ("test", 3)):
        s = spec("cifar10", tmp_path, split=split)
        ds = data.load(s)
        np.testing.assert_array_equal(ds.images, written[split][0])
        np.testing.assert_array_equal(ds.labels, written[split][1])
        assert ds.info == data.ImageInfo((3, 32, 32), 10, n, ds.info.class_names)
        assert ds.info.class_names is not None and ds.info.class_names[:2] == ["airplane", "automobile"]
        assert data.probe(s) == ds.info


def test_cifar10_planes_are_red_green_blue_in_row_major_order(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=1, splits=["test"])
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    row = np.zeros(3072, dtype=np.uint8)
    row[0] = 11  # red, (0, 0)
    row[1024 + 1] = 22  # green, (0, 1)
    row[2048 + 32] = 33  # blue, (1, 0)
    batch.write_bytes(pickle.dumps({b"data": row[None], b"labels": [4]}, protocol=2))
    ds = data.load(spec("cifar10", tmp_path, split="test"))
    assert (ds.images[0, 0, 0, 0], ds.images[0, 1, 0, 1], ds.images[0, 2, 1, 0]) == (11, 22, 33)
    assert ds.images.sum() == 66 and ds.labels is not None and ds.labels.tolist() == [4]


def test_cifar10_limit_spans_batches_in_order(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, n_per_batch=3, splits=["train"])
    ds = data.load(spec("cifar10", tmp_path, limit=4))
    np.testing.assert_array_equal(ds.images, written["train"][0][:4])
    np.testing.assert_array_equal(ds.labels, written["train"][1][:4])


def test_cifar10_train_split_missing_says_the_test_split_is_there(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=2, splits=["test"])
    with pytest.raises(UserError) as e:
        data.probe(spec("cifar10", tmp_path))
    assert "data_batch_1" in str(e.value) and "found the test split" in str(e.value)
    assert "spec.data.split=test" in str(e.value)


@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn_mat_round_trips_exact_pixels_with_10_meaning_zero(tmp_path: Path, split: str) -> None:
    images, digits = write_svhn(tmp_path, split, n=12)
    s = spec("svhn", tmp_path, split=split)
    ds = data.load(s)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, digits)
    assert ds.labels is not None and ds.labels.min() == 0 and ds.labels.max() == 9
    assert data.probe(s) == ds.info == data.ImageInfo((3, 32, 32), 10, 12, [str(d) for d in range(10)])
    assert data.load(s.model_copy(update={"limit": 5})).images.shape == (5, 3, 32, 32)


def test_image_folder_with_class_folders_round_trips_exact_pixels_and_labels(tmp_path: Path) -> None:
    images, labels = write_image_folder(tmp_path, ["cat", "dog"], n_per_class=3, size=8)
    ds = data.load(spec("folder", tmp_path))
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.info == data.ImageInfo((3, 8, 8), 2, 6, ["cat", "dog"])
    assert data.probe(spec("folder", tmp_path)) == ds.info


def test_image_folder_without_class_folders_is_unlabelled(tmp_path: Path) -> None:
    images, _ = write_image_folder(tmp_path, [], n_per_class=4, size=6)
    ds = data.load(spec("folder", tmp_path))
    np.testing.assert_array_equal(ds.images, images)
    assert ds.labels is None and ds.info.num_classes is None


def test_image_folder_with_train_and_test_folders_reads_the_asked_split(tmp_path: Path) -> None:
    train, _ = write_image_folder(tmp_path / "train", ["a", "b"], n_per_class=2, size=4, seed=1)
    test, _ = write_image_folder(tmp_path / "test", ["a", "b"], n_per_class=1, size=4, seed=2)
    np.testing.assert_array_equal(data.load(spec("folder", tmp_path, split="train")).images, train)
    np.testing.assert_array_equal(data.load(spec("folder", tmp_path, split="test")).images, test)


def test_image_folder_with_only_a_train_folder_refuses_the_test_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", ["a"], n_per_class=1, size=4)
    with pytest.raises(UserError, match="spec.data.split=train"):
        data.probe(spec("folder", tmp_path, split="test"))


def test_image_folder_jpegs_load_with_the_right_shape(tmp_path: Path) -> None:
    write_image_folder(tmp_path, ["x", "y", "z"], n_per_class=2, size=16, fmt="jpg")
    ds = data.load(spec("folder", tmp_path, image_size=8))
    assert ds.images.shape == (6, 3, 8, 8) and ds.labels is not None and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_centre_crops_non_square_images_before_resizing(tmp_path: Path) -> None:
    # 48x32: 8-pixel red bands left and right of a green 32x32 centre.
    pixels = np.zeros((32, 48, 3), dtype=np.uint8)
    pixels[:, :8, 0] = pixels[:, 40:, 0] = 255
    pixels[:, 8:40, 1] = 200
    Image.fromarray(pixels).save(tmp_path / "a.png")
    ds = data.load(spec("folder", tmp_path))  # default size: the short side, 32
    assert ds.images.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(ds.images[0].transpose(1, 2, 0), pixels[:, 8:40])
    small = data.load(spec("folder", tmp_path, image_size=16)).images
    assert small.shape == (1, 3, 16, 16) and small[:, 0].max() == 0 and small[:, 1].min() == 200


def test_image_folder_channels_1_reads_greyscale(tmp_path: Path) -> None:
    images, _ = write_image_folder(tmp_path, [], n_per_class=2, size=5)
    ds = data.load(spec("folder", tmp_path, channels=1))
    expected = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in images])
    np.testing.assert_array_equal(ds.images[:, 0], expected)
    assert ds.info.shape == (1, 5, 5)


def test_empty_image_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no PNG/JPG/JPEG images"):
        data.probe(spec("folder", tmp_path))


def test_fake_dataset_is_deterministic_and_honours_its_options(tmp_path: Path) -> None:
    s = spec("fake", num_classes=4, image_size=16, channels=1, limit=50)
    a, b = data.load(s), data.load(s)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images.shape == (50, 1, 16, 16) and a.info == data.probe(s)
    assert a.labels is not None and set(a.labels.tolist()) == {0, 1, 2, 3}
    default = data.load(spec("fake"))
    assert default.images.shape == (2048, 3, 32, 32) and default.labels is None
    assert 120 < default.images.mean() < 135  # uniform on 0-255, not blank


# --- corrupt files ---------------------------------------------------------------------------


def _user_error(s: DataSpec, path: Path, match: str, calls: tuple = (data.load,)) -> None:
    for call in calls:
        with pytest.raises(UserError, match=match) as e:
            call(s)
        assert str(e.value).startswith(str(path)), str(e.value)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    images_path, _ = write_idx(tmp_path, "train", random_images(50, (28, 28)), random_labels(50))
    images_path.write_bytes(images_path.read_bytes()[:-200])
    _user_error(spec("mnist", tmp_path), images_path, "truncated gzip")


def test_a_file_that_is_not_gzip_names_the_file(tmp_path: Path) -> None:
    images_path, _ = write_idx(tmp_path, "train", random_images(2, (28, 28)), random_labels(2))
    images_path.write_bytes(b"this is not gzip data at all")
    _user_error(spec("mnist", tmp_path), images_path, "corrupt gzip", calls=(data.probe, data.load))


def test_wrong_idx_magic_names_the_file(tmp_path: Path) -> None:
    images, labels = random_images(2, (28, 28)), random_labels(2)
    _, labels_path = write_idx(tmp_path, "train", images, labels, gz=False)
    labels_path.write_bytes(idx_bytes(labels, magic=0x00000803))  # the images magic
    _user_error(spec("mnist", tmp_path), labels_path, "magic 0x00000803, expected 0x00000801", (data.probe, data.load))


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_payload_shorter_than_the_header_says_names_the_file(tmp_path: Path, gz: bool) -> None:
    images_path, _ = write_idx(tmp_path, "train", random_images(4, (28, 28)), random_labels(4), gz=gz)
    content = idx_bytes(random_images(4, (28, 28)))[:-28]  # one row short
    images_path.write_bytes(gzip.compress(content) if gz else content)
    _user_error(spec("mnist", tmp_path), images_path, "truncated: the header says 4 x 28 x 28 = 3136 bytes")


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    write_idx(tmp_path, "train", random_images(4, (28, 28)), random_labels(4))
    images_path, _ = write_idx(tmp_path / "other", "train", random_images(3, (28, 28)), random_labels(3))
    shutil.copy(images_path, tmp_path)
    _user_error(spec("mnist", tmp_path), tmp_path / images_path.name, "3 images but .* has 4 labels", (data.probe,))


def test_idx_label_outside_0_to_9_names_the_file(tmp_path: Path) -> None:
    _, labels_path = write_idx(tmp_path, "train", random_images(2, (28, 28)), np.array([3, 10]))
    _user_error(spec("mnist", tmp_path), labels_path, "label 10 is not a class")


def test_garbage_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(b"\x80\x02garbage, not a pickle")
    _user_error(spec("cifar10", tmp_path), batch, "not a CIFAR-10 python pickle")


def test_cifar_pickle_with_the_wrong_shape_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=2, splits=["test"])
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2))
    _user_error(spec("cifar10", tmp_path, split="test"), batch, r"uint8 of shape \(N, 3072\)")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=2, splits=["test"])
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    marker = tmp_path / "pwned"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    _user_error(spec("cifar10", tmp_path, split="test"), batch, "refusing to load")
    assert not marker.exists()


def test_garbage_mat_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + os.urandom(300))
    _user_error(spec("svhn", tmp_path), path, "not a readable MATLAB .mat file", (data.probe, data.load))


def test_mat_file_without_svhn_variables_names_the_file(tmp_path: Path) -> None:
    import scipy.io

    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    _user_error(spec("svhn", tmp_path, split="test"), path, "32 x 32 x 3 x N", (data.probe, data.load))


def test_unreadable_png_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, ["a"], n_per_class=3, size=8)
    broken = tmp_path / "a" / "0001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # header only: the pixel data is cut off
    _user_error(spec("folder", tmp_path), broken, "not a readable image")
    (tmp_path / "a" / "0000.png").write_bytes(b"not a png")  # the first image is the one probe opens
    _user_error(spec("folder", tmp_path), tmp_path / "a" / "0000.png", "not a readable image", (data.probe,))


# --- missing files and downloads -------------------------------------------------------------


def test_missing_root_directory_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"spec.data.root: .*nowhere does not exist"):
        data.probe(spec("svhn", tmp_path / "nowhere"))


def test_data_errors_about_a_spec_field_carry_it(tmp_path: Path, mnist_root: Path) -> None:
    # Code that reacts to the field (evaluate's --data-root hint) reads it, not the message.
    cases = [
        (spec("svhn", tmp_path / "nowhere"), "spec.data.root"),
        (spec("svhn", tmp_path, split="test"), "spec.data.root"),  # the split's files are missing
        (spec("mnist", mnist_root, split="test", num_classes=5), "spec.data.num_classes"),
    ]
    for s, field in cases:
        with pytest.raises(UserError) as e:
            data.probe(s)
        assert e.value.field == field, str(e.value)
    with pytest.raises(UserError) as e:
        data.get("imagenet")
    assert e.value.field == "spec.data.dataset"


def test_a_root_for_an_unknown_user_or_with_a_nul_is_a_user_error_naming_the_field() -> None:
    # Path.expanduser raises RuntimeError for an unknown user; os.stat ValueError for a NUL.
    for root, why in (("~nosuchuser-ganops/mnist", "no user 'nosuchuser-ganops'"), ("a\0b", "NUL")):
        with pytest.raises(UserError, match=f"spec.data.root: .*{why}") as e:
            data.root_dir(DataSpec.model_construct(dataset="mnist", root=root))
        assert e.value.field == "spec.data.root"
    assert data.expand_user("~/x", "f") == Path.home() / "x"


def test_the_fake_dataset_refuses_a_size_it_cannot_hold() -> None:
    # model_construct skips the spec's own bound: the reader checks before allocating.
    huge = DataSpec.model_construct(dataset="fake", limit=10**12, image_size=None, channels=None, num_classes=None)
    with pytest.raises(UserError, match="spec.data.limit: .* GiB") as e:
        data.probe(huge)
    assert e.value.field == "spec.data.limit"


def test_missing_files_list_the_expected_names_in_the_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        data.probe(spec("svhn", tmp_path, split="test"))
    assert "test_32x32.mat" in str(e.value) and str(tmp_path) in str(e.value)
    assert "found the" not in str(e.value) and "spec.data.download=true" in str(e.value)


def test_download_without_network_names_the_files_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ".invalid" never resolves (RFC 2606): a DNS failure here and on any CI machine.
    flavour = replace(idx.FLAVOURS["mnist"], base_urls=("http://ganops-test.invalid/mnist/",))
    monkeypatch.setitem(idx.FLAVOURS, "mnist", flavour)
    root = tmp_path / "new"
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        data.load(spec("mnist", root, download=True))
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert f"Place these files in {root}" in msg
    assert "train-images-idx3-ubyte.gz  from http://ganops-test.invalid/mnist/train-images-idx3-ubyte.gz" in msg
    assert "train-labels-idx1-ubyte.gz" in msg
    assert list(root.iterdir()) == []  # no half-written file left behind


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on localhost serving a directory."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()


def test_download_fetches_the_files_and_verifies_their_md5(
    tmp_path: Path, file_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = file_server
    images, labels = random_images(6, (28, 28)), random_labels(6)
    paths = write_idx(served, "test", images, labels)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths}
    monkeypatch.setitem(idx.FLAVOURS, "mnist", replace(idx.FLAVOURS["mnist"], base_urls=(url,), md5=md5))
    ds = data.load(spec("mnist", tmp_path / "dl", split="test", download=True))
    np.testing.assert_array_equal(ds.images[:, 0], images)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(md5)


def test_download_with_a_wrong_md5_keeps_nothing(
    tmp_path: Path, file_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = file_server
    write_idx(served, "test", random_images(2, (28, 28)), random_labels(2))
    md5 = {"t10k-images-idx3-ubyte.gz": "0" * 32, "t10k-labels-idx1-ubyte.gz": "0" * 32}
    monkeypatch.setitem(idx.FLAVOURS, "mnist", replace(idx.FLAVOURS["mnist"], base_urls=(url,), md5=md5))
    root = tmp_path / "dl"
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz: downloaded from .* but its md5 is"):
        data.probe(spec("mnist", root, split="test", download=True))
    assert list(root.iterdir()) == []


# --- the public surface ----------------------------------------------------------------------


def test_to_unit_range_maps_0_to_minus_1_and_255_to_1() -> None:
    out = data.to_unit_range(np.array([[0, 255], [127, 128]], dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert out[0].tolist() == [-1.0, 1.0]
    assert -0.01 < out[1, 0] < 0 < out[1, 1] < 0.01


def test_registry_names_match_the_spec() -> None:
    assert tuple(data.DATASETS) == SPEC_DATASETS


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UserError, match="unknown dataset 'imagenet'; valid: mnist, fashion_mnist, cifar10"):
        data.get("imagenet")


def test_num_classes_that_disagree_with_the_data_are_a_user_error(mnist_root: Path) -> None:
    with pytest.raises(UserError, match="spec.data.num_classes: 5, but the mnist data has 10 classes"):
        data.probe(spec("mnist", mnist_root, split="test", num_classes=5))


def test_importing_ganops_data_imports_no_torch_scipy_or_pil() -> None:
    # A finder that records every attempt, so the test also fails where torch is not
    # installed (or an import of it is wrapped in try/except).
    code = """
import sys
heavy = ("torch", "scipy", "PIL")
attempted = []

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in heavy:
            attempted.append(name)
        return None

sys.meta_path.insert(0, Spy())
import ganops.data
attempted += [m for m in heavy if m in sys.modules]
assert not attempted, attempted
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
