"""``ganops data pack`` / ``verify``: real MNIST and a folder of JPEGs packed locally and on
the S3 server, read back pixel for pixel; a pack killed mid-way resumes to the same bytes;
finished packs are kept; damaged shards are named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ganops.data as data
from ganops.cli import main
from ganops.data import shards
from ganops.errors import UserError
from ganops.spec.models import DataSpec

GANOPS = str(Path(sys.executable).with_name("ganops"))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: the S3 server
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where packs go: a local directory, or a prefix in a fresh bucket of the session's S3 server."""
    if request.param == "local":
        return str(tmp_path / "packs")
    return f"s3://{request.getfixturevalue('bucket')}/packs"


def pack(*args: str) -> None:
    """``ganops data pack ARGS`` in this process, quietly (a failure raises: main exits)."""
    main(["data", "pack", "--quiet", *args])


def fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a non-zero exit; the error text it printed."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code not in (0, None)
    return capsys.readouterr().err


def read_back(root: str) -> data.ArrayDataset:
    m = shards.read_manifest(root)
    shards.check_shards(root, m)
    shards.verify_shards(root, m)
    return shards.read_first(root, m, m.num_images)


def jpeg_folder(root: Path, sizes: list[tuple[int, int]], classes: tuple[str, ...] = ("cat", "dog")) -> None:
    """Photos-like JPEGs of the given (width, height), spread over class sub-folders."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        # Smooth gradients plus noise: JPEG-like content, and crops that differ by position.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // (w + h))], -1)
        pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(d / f"{i:05d}.jpg", quality=90)


def mixed_sizes(n: int, lo: int = 40, hi: int = 120) -> list[tuple[int, int]]:
    rng = np.random.default_rng(1)
    return [(int(a), int(b)) for a, b in rng.integers(lo, hi, (n, 2))]


# --- round trips -------------------------------------------------------------------------------


def test_real_mnist_packs_and_reads_back_pixel_for_pixel(base: str, mnist_root: Path) -> None:
    out = f"{base}/mnist"
    pack(out, "--dataset", "mnist", "--root", str(mnist_root), "--split", "test", "--shard-mb", "2")

    got = read_back(out)
    ref = data.load(DataSpec(dataset="mnist", root=str(mnist_root), split="test"))
    m = shards.read_manifest(out)
    assert m.num_images == 10_000 and m.shape == (1, 28, 28) and m.num_classes == 10
    assert m.class_names == ref.info.class_names
    assert len(m.shards) == 4  # 2 MiB of 784-byte images: 2,674 a shard
    assert [s.first_index for s in m.shards] == [0, 2674, 5348, 8022]
    assert m.source["dataset"] == "mnist" and m.source["split"] == "test"
    assert m.source["root"] == str(mnist_root.resolve())
    assert np.array_equal(got.images, ref.images)
    assert np.array_equal(got.labels, ref.labels)
    # No state file or temporary file is left beside a finished pack.
    loc = shards.locate_root(out)
    from ganops import storage

    assert storage.list_dir(loc) == sorted([*(s.file for s in m.shards), "manifest.json"])


def test_a_folder_of_mixed_size_jpegs_packs_as_training_on_the_folder_reads_it(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    jpeg_folder(root, mixed_sizes(150))
    out = tmp_path / "pack"
    pack(str(out), "--dataset", "folder", "--root", str(root), "--image-size", "32", "--shard-mb", "0.1")

    got = read_back(str(out))
    ref = data.load(DataSpec(dataset="folder", root=str(root), image_size=32))
    m = shards.read_manifest(str(out))
    assert m.shape == (3, 32, 32) and m.class_names == ["cat", "dog"] and len(m.shards) == 5
    assert np.array_equal(got.images, ref.images)
    assert np.array_equal(got.labels, ref.labels)


def test_grey_unlabelled_folder_with_a_limit_has_no_label_column(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = tmp_path / "flat"
    jpeg_folder(root, mixed_sizes(30), classes=("",))
    out = tmp_path / "pack"
    pack(str(out), "--dataset", "folder", "--root", str(root), "--image-size", "16", "--channels", "1", "--limit", "25")

    m = shards.read_manifest(str(out))
    spec = DataSpec(dataset="folder", root=str(root), image_size=16, channels=1, limit=25)
    ref = data.load(spec)
    got = read_back(str(out))
    assert m.num_images == 25 and m.num_classes is None and got.labels is None
    assert np.array_equal(got.images, ref.images)
    assert pq.read_schema(out / m.shards[0].file).names == ["index", "image"]


def test_folder_streaming_yields_what_load_gives_from_any_start(tmp_path: Path) -> None:
    from ganops.data import folder

    root = tmp_path / "photos"
    jpeg_folder(root, mixed_sizes(23))
    spec = DataSpec(dataset="folder", root=str(root), image_size=20)
    ref = data.load(spec)
    for pool in ("processes", "threads"):
        parts = list(folder.iter_images(spec, start=5, stop=21, chunk=4, workers=2, pool=pool))
        assert [len(p[0]) for p in parts] == [4, 4, 4, 4]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), ref.images[5:21])
        assert np.array_equal(np.concatenate([p[1] for p in parts]), ref.labels[5:21])


# --- crash safety ------------------------------------------------------------------------------


def start_pack(out: Path, mnist_root: Path, shard_mb: str) -> subprocess.Popen[bytes]:
    args = [GANOPS, "data", "pack", str(out), "--dataset", "mnist", "--root", str(mnist_root), "--split", "test"]
    return subprocess.Popen([*args, "--shard-mb", shard_mb], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_after_first_shard(out: Path, mnist_root: Path, shard_mb: str) -> None:
    """Start the real command and SIGKILL it once its state lists a finished shard."""
    proc = start_pack(out, mnist_root, shard_mb)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "_pack_state.json").read_text())["shards"]:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.002)
        assert proc.poll() is None, f"the pack ended before it could be killed: {proc.communicate()[1].decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert (out / "shard-00000.parquet").exists()


def finish(out: Path, mnist_root: Path, shard_mb: str) -> str:
    r = subprocess.run(
        [GANOPS, "data", "pack", str(out), "--dataset", "mnist", "--root", str(mnist_root), "--split", "test",
         "--shard-mb", shard_mb],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_a_killed_pack_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path: Path, mnist_root: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    finish(whole, mnist_root, "0.05")  # 66 images a shard: 152 shards

    kill_after_first_shard(resumed, mnist_root, "0.05")
    state = json.loads((resumed / "_pack_state.json").read_text())
    kept = len(state["shards"])
    first = (resumed / "shard-00000.parquet").stat()
    err = finish(resumed, mnist_root, "0.05")

    assert f"{kept} shard(s) checked and kept" in err or f"{kept + 1} shard(s) checked and kept" in err
    assert (resumed / "shard-00000.parquet").stat().st_mtime_ns == first.st_mtime_ns  # reused, not rewritten
    assert (resumed / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in whole.iterdir())
    m = shards.read_manifest(str(resumed))
    shards.verify_shards(str(resumed), m)
    assert len(m.shards) == 152


def test_a_resumed_pack_redoes_a_damaged_shard_and_ignores_shards_of_other_options(
    tmp_path: Path, mnist_root: Path
) -> None:
    reference = tmp_path / "reference"
    finish(reference, mnist_root, "0.1")

    out = tmp_path / "out"
    kill_after_first_shard(out, mnist_root, "0.05")
    # Other options: nothing of the killed run may be reused.
    err = finish(out, mnist_root, "0.1")
    assert "other options or other data" in err and "checked and kept" not in err
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())

    out2 = tmp_path / "out2"
    kill_after_first_shard(out2, mnist_root, "0.1")
    shard = out2 / "shard-00000.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    shard.write_bytes(bytes(raw))
    err = finish(out2, mnist_root, "0.1")
    assert "0 shard(s) checked and kept; redoing from shard-00000.parquet" in err
    assert (out2 / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    shards.verify_shards(str(out2), shards.read_manifest(str(out2)))


def test_a_finished_pack_is_not_overwritten_without_force(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pack"
    args = ["data", "pack", str(out), "--dataset", "mnist", "--root", str(mnist_root), "--split", "test", "-q"]
    main([*args, "--limit", "100"])
    before = (out / "manifest.json").read_bytes()

    err = fails([*args, "--limit", "200"], capsys)
    assert f"OUT: {out} already holds a finished pack" in err and "--force" in err
    assert "Traceback" not in err
    assert (out / "manifest.json").read_bytes() == before

    main([*args, "--limit", "200", "--force"])
    assert shards.read_manifest(str(out)).num_images == 200


# --- damaged packs -----------------------------------------------------------------------------


def _fix_up(out: Path, edit) -> None:
    """Edit the manifest (a JSON dict) and write it back: a pack whose manifest lies."""
    import json

    doc = json.loads((out / "manifest.json").read_text())
    edit(doc)
    (out / "manifest.json").write_text(json.dumps(doc))


def test_a_pack_never_writes_over_or_deletes_shard_files_it_did_not_write(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the user's look-alike shards were overwritten (one) and deleted (another), exit 0.
    out = tmp_path / "pack"
    out.mkdir()
    for name in ("shard-00000.parquet", "shard-00007.parquet"):
        (out / name).write_bytes(b"the user's own " + name.encode())
    err = fails(["data", "pack", "--quiet", str(out), "--dataset", "mnist", "--root", str(mnist_root),
                 "--split", "test", "--limit", "100"], capsys)  # fmt: skip
    assert "holds shard files no pack here wrote (shard-00000.parquet, shard-00007.parquet" in err
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.parquet", "shard-00007.parquet"]
    assert (out / "shard-00000.parquet").read_bytes() == b"the user's own shard-00000.parquet"


def test_a_full_verify_checks_what_quick_does_and_every_row(tmp_path: Path, mnist_root: Path) -> None:
    # Before: the full verify skipped the footers (a manifest lying about the count passed it
    # while --quick refused), and read no row (a wrong label, a shifted index: "ok").
    import hashlib

    out = tmp_path / "pack"
    pack(str(out), "--dataset", "mnist", "--root", str(mnist_root), "--split", "test", "--limit", "600",
         "--shard-mb", "1")  # fmt: skip
    good = (out / "manifest.json").read_text()

    def lie_about_the_count(doc: dict) -> None:
        doc["shards"][0]["num_images"] -= 1
        doc["num_images"] -= 1

    _fix_up(out, lie_about_the_count)
    with pytest.raises(UserError, match=r"shard .*shard-00000\.parquet has \d+ rows, the manifest says"):
        shards.verify_shards(str(out), shards.read_manifest(str(out)))
    (out / "manifest.json").write_text(good)
    # The shape and the row groups: the quick check (and so the dry run) reads them now. Before,
    # they passed it and every worker failed on its first batch, retried as "lost" workers.
    for edit, message in ((lambda d: d.update(shape=[1, 28, 27]), r"holds images of \[784\] bytes, but the manifest's "
                                                                  r"shape 1x28x27 makes 756"),
                          (lambda d: d.update(row_group=7), r"has row groups of \[.*\] images, the manifest says 7")):  # fmt: skip
        _fix_up(out, edit)
        with pytest.raises(UserError, match=message):
            shards.check_shards(str(out), shards.read_manifest(str(out)))
        (out / "manifest.json").write_text(good)

    # A shard rewritten with a label out of range, its size and sha256 fixed up in the manifest.
    m = shards.read_manifest(str(out))
    first = m.shards[0]
    ds = shards.read_first(str(out), m, first.num_images)
    labels = ds.labels.copy()
    labels[7] = 12
    data = shards.encode_shard(first.first_index, ds.images, labels)
    (out / first.file).write_bytes(data)

    def fix_up_the_shard(doc: dict) -> None:
        doc["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    _fix_up(out, fix_up_the_shard)
    m = shards.read_manifest(str(out))
    shards.check_shards(str(out), m)  # the quick check cannot see it
    with pytest.raises(UserError, match=r"shard-00000\.parquet, row group 0: label 12 is not one of the manifest's 10"):
        shards.verify_shards(str(out), m)


def test_a_truncated_or_altered_shard_is_named_by_the_checks(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pack"
    pack(str(out), "--dataset", "mnist", "--root", str(mnist_root), "--split", "test", "--shard-mb", "2")
    m = shards.read_manifest(str(out))
    shards.check_shards(str(out), m)
    shards.verify_shards(str(out), m)
    main(["data", "verify", str(out)])
    assert capsys.readouterr().out == "10000\t4\t1x28x28\t10 classes\n"

    second = out / "shard-00001.parquet"
    good = second.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    second.write_bytes(bytes(flipped))
    shards.check_shards(str(out), m)  # same size, intact footer: only the sha256 tells
    with pytest.raises(UserError, match=r"shard .*shard-00001\.parquet does not match its sha256"):
        shards.verify_shards(str(out), m)
    assert "shard-00001.parquet does not match its sha256" in fails(["data", "verify", str(out)], capsys)

    second.write_bytes(good[:-1])
    with pytest.raises(UserError, match=r"shard .*shard-00001\.parquet is \d+ bytes, the manifest says \d+"):
        shards.check_shards(str(out), m)
    assert "shard-00001.parquet is" in fails(["data", "verify", "--quick", str(out)], capsys)

    # A damaged footer (same size) is a UserError naming the shard, not a pyarrow traceback.
    tail = bytearray(good)
    tail[-10:-4] = b"\x00" * 6
    second.write_bytes(bytes(tail))
    with pytest.raises(UserError, match=r"shard .*shard-00001\.parquet is not a Parquet file"):
        shards.check_shards(str(out), m)


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_naming_the_flag_and_writing_nothing(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pack"
    err = fails(["data", "pack", str(out), "--dataset", "imagenet", "--root", "x"], capsys)
    assert "--dataset" in err and "'imagenet' is not one of" in err and "mnist" in err

    err = fails(["data", "pack", str(out), "--dataset", "mnist"], capsys)
    assert err.startswith("error: --root: required for dataset 'mnist'")

    err = fails(["data", "pack", str(out), "--dataset", "mnist", "--root", str(tmp_path / "nowhere")], capsys)
    assert err.startswith(f"error: --root: {tmp_path / 'nowhere'} does not exist")

    err = fails(
        ["data", "pack", str(out), "--dataset", "mnist", "--root", str(mnist_root), "--image-size", "32"], capsys
    )
    assert err.startswith("error: --image-size: only for 'folder' and 'fake' datasets")

    err = fails(["data", "pack", str(out), "--dataset", "fake", "--shard-mb", "0"], capsys)
    assert "--shard-mb" in err

    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    err = fails(["data", "pack", str(out), "--dataset", "folder", "--root", str(empty)], capsys)
    assert "no PNG/JPG/JPEG images" in err and str(empty) in err and "Traceback" not in err

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    err = fails(["data", "pack", str(a_file / "sub"), "--dataset", "fake", "--limit", "8"], capsys)
    assert err.startswith(f"error: OUT: cannot write to {a_file / 'sub'}") or f"OUT: {a_file / 'sub'}" in err

    err = fails(["data", "pack", str(a_file), "--dataset", "fake", "--limit", "8"], capsys)
    assert f"OUT: {a_file} is a file" in err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    err = fails(["data", "pack", str(busy), "--dataset", "fake", "--limit", "8"], capsys)
    assert f"OUT: {busy} holds files that are not a pack's (notes.txt)" in err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]

    assert not out.exists() or not any(out.iterdir())  # no refused run left a shard behind
    err = fails(["data", "verify", str(out)], capsys)
    assert "ROOT: " in err and "is not a finished pack" in err


def test_the_fake_dataset_packs_with_its_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fake"
    main(["data", "pack", str(out), "--dataset", "fake", "--limit", "300", "--num-classes", "3", "--image-size", "8"])
    err = capsys.readouterr().err
    assert "packed 300 images of 3x8x8, 3 classes into 1 shards" in err
    assert "packing  300/300 images" in err  # the progress line, on stderr
    ref = data.load(DataSpec(dataset="fake", limit=300, num_classes=3, image_size=8))
    got = read_back(str(out))
    assert np.array_equal(got.images, ref.images) and np.array_equal(got.labels, ref.labels)
