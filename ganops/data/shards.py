"""A packed dataset ("shards"): Parquet files of raw uint8 images plus a manifest.

``ganops data pack`` writes one (``ganops.data.pack``); ``spec.data.dataset: shards`` trains
from one through Ray Data (``ganops.train.stream``); this module is the format both agree on,
and the reader for the CLI's checks and for the small reads (evaluation references, grids).

Layout of a pack at ``root`` (a local directory or ``s3://bucket/prefix``)::

    shard-00000.parquet   columns: index int64 (0..N-1, global), image binary (C*H*W bytes,
    shard-00001.parquet            uint8, CHW), label int64 (only in labelled packs)
    ...
    manifest.json         written last: a pack without it is unfinished and never read

Raw pixels rather than PNG/JPEG: decoding is a ``numpy.frombuffer`` (no per-image codec on
the CPUs that feed the GPUs) at the price of disk: 256×256 RGB is 192 KiB an image. Parquet
row groups of ``row_group_images`` (at most 1,024 images, about 8 MB) keep a reader's unit
of work small.

This module imports numpy only; pyarrow is imported by the functions that read files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.data import ArrayDataset, ImageInfo
    from ganops.spec.models import DataSpec
    from ganops.storage import Location

FORMAT = "ganops-shards"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.parquet"
ROW_GROUP_IMAGES = 1024
# ...at most: a row group is one Ray Data read task's block, so it is also kept near
# ROW_GROUP_BYTES (256x256 RGB: 42 images, 8 MB, where 1,024 would be 200 MB).
ROW_GROUP_BYTES = 8 << 20
MIN_ROW_GROUP_IMAGES = 16


def row_group_images(image_bytes: int) -> int:
    """Images per Parquet row group for images of ``image_bytes`` each."""
    return max(MIN_ROW_GROUP_IMAGES, min(ROW_GROUP_IMAGES, ROW_GROUP_BYTES // max(1, image_bytes)))


ROOT_FIELD = "spec.data.root"
# A manifest is a few hundred bytes per shard; anything far larger is not one of ours.
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class ShardInfo:
    file: str
    """File name, relative to the pack's root."""
    num_images: int
    first_index: int
    """The ``index`` of its first row: shards hold consecutive indexes."""
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    num_images: int
    shape: tuple[int, int, int]
    """(C, H, W)."""
    num_classes: int | None
    class_names: list[str] | None
    shards: list[ShardInfo]
    source: dict[str, Any] = field(default_factory=dict)
    """How the pack was made (the data section it was packed from), for people."""
    row_group: int | None = None
    """Images per Parquet row group (None: ``row_group_images`` of the shape)."""

    @property
    def image_bytes(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def rows_per_group(self) -> int:
        return self.row_group or row_group_images(self.image_bytes)

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None

    def to_json(self) -> str:
        d = asdict(self)
        d = {"format": FORMAT, "version": VERSION, **d, "shape": list(self.shape), "dtype": "uint8", "layout": "CHW",
             "row_group": self.rows_per_group}  # fmt: skip
        return json.dumps(d, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and check a manifest; ``where`` (its URI) names it in every error."""
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(where, f"not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise _bad(where, f'not a ganops pack manifest (no "format": "{FORMAT}")')
        if d.get("version") != VERSION:
            raise _bad(where, f"version {d.get('version')!r}; this ganops reads version {VERSION}")
        try:
            shape = tuple(int(x) for x in d["shape"])
            n = int(d["num_images"])
            k = None if d.get("num_classes") is None else int(d["num_classes"])
            names = d.get("class_names")
            shards = [ShardInfo(**s) for s in d["shards"]]
            group = None if d.get("row_group") is None else int(d["row_group"])
        except (KeyError, TypeError, ValueError) as e:
            raise _bad(where, f"malformed ({type(e).__name__}: {e})") from None
        if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] <= 0 or shape[2] <= 0:
            raise _bad(where, f"shape {list(shape)} is not [channels (1 or 3), height, width]")
        if d.get("dtype", "uint8") != "uint8" or d.get("layout", "CHW") != "CHW":
            raise _bad(where, "only uint8 CHW images are supported")
        if k is not None and k <= 0:
            raise _bad(where, f"num_classes {k} must be positive (or null for unlabelled data)")
        if names is not None and (k is None or len(names) != k):
            raise _bad(where, f"{len(names)} class_names for num_classes {k}")
        if not shards:
            raise _bad(where, "lists no shards")
        expect = 0
        for s in shards:
            if s.num_images <= 0:
                raise _bad(where, f"shard {s.file} is empty (num_images {s.num_images})")
            if s.first_index != expect:
                raise _bad(where, f"shard {s.file} starts at index {s.first_index}, expected {expect}")
            if "/" in s.file or s.file in ("", ".", ".."):
                raise _bad(where, f"shard name {s.file!r} must be a plain file name in the pack's directory")
            expect += s.num_images
        if expect != n:
            raise _bad(where, f"the shards hold {expect} images, the manifest says num_images {n}")
        if group is not None and group <= 0:
            raise _bad(where, f"row_group {group} must be positive")
        return cls(n, shape, k, names, shards, dict(d.get("source") or {}), group)  # type: ignore[arg-type]


def _bad(where: str, why: str) -> UserError:
    return UserError(f"{ROOT_FIELD}: the pack's manifest {where}: {why}", field=ROOT_FIELD)


def _root(spec_or_root: DataSpec | str) -> str:
    root = spec_or_root if isinstance(spec_or_root, str) else spec_or_root.root
    if not root:
        raise UserError(f"{ROOT_FIELD}: required for dataset 'shards' (the pack's directory)", field=ROOT_FIELD)
    return root


def locate_root(root: str) -> Location:
    from ganops import storage  # pyarrow

    if not storage.is_s3(root):
        from ganops.data import expand_user

        root = str(expand_user(root, ROOT_FIELD))
    return storage.locate(root)


def read_manifest(root: str) -> Manifest:
    """The pack's manifest, checked; a UserError naming the manifest or root otherwise."""
    from ganops import storage

    loc = locate_root(root).child(MANIFEST)
    with storage.errors_as_user(loc.uri, field=ROOT_FIELD):
        if not storage.exists(loc):
            raise UserError(
                f"{ROOT_FIELD}: {loc.uri} does not exist: {root} is not a finished pack "
                "(make one with `ganops data pack`; an interrupted pack has no manifest)",
                field=ROOT_FIELD,
            )
        size = loc.fs.get_file_info(loc.path).size or 0
        if size > MAX_MANIFEST_BYTES:
            raise _bad(loc.uri, f"{size} bytes, over the {MAX_MANIFEST_BYTES >> 20} MiB a manifest can be")
        text = storage.read_bytes(loc)
    return Manifest.from_json(text, loc.uri)


def check_shards(root: str, manifest: Manifest, *, footers: bool = True) -> None:
    """Every shard is there, of the size the manifest says and (``footers``) a Parquet file
    with the rows and columns the manifest promises. Reads sizes and Parquet footers only:
    ``verify_shards`` reads the bytes and checks their sha256."""
    import pyarrow.parquet as pq

    from ganops import storage

    base = locate_root(root)
    for s in manifest.shards:
        loc = base.child(s.file)
        with storage.errors_as_user(loc.uri, field=ROOT_FIELD):
            info = loc.fs.get_file_info(loc.path)
            if info.type.name == "NotFound":
                raise UserError(f"{ROOT_FIELD}: shard {loc.uri} is missing (listed in the manifest)", field=ROOT_FIELD)
            if info.size != s.bytes:
                raise UserError(
                    f"{ROOT_FIELD}: shard {loc.uri} is {info.size} bytes, the manifest says {s.bytes} "
                    "(truncated or replaced)",
                    field=ROOT_FIELD,
                )
            if not footers:
                continue
            try:
                with loc.fs.open_input_file(loc.path) as f:
                    pf = pq.ParquetFile(f)
                    meta = pf.metadata
                    names = set(meta.schema.names)
                    rows = meta.num_rows
                    groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                    _check_rows(loc.uri, s, rows, names, manifest)
                    _check_groups(loc.uri, groups, manifest)
                    if s is manifest.shards[0] and groups:
                        # One row group read: an image size that is not the manifest's shape is
                        # found here, not by every worker's first batch.
                        _check_images(loc.uri, pf.read_row_group(0, columns=["image"]), manifest)
            except (OSError, ValueError) as e:  # a damaged footer: ArrowInvalid, a ValueError
                raise UserError(
                    f"{ROOT_FIELD}: shard {loc.uri} is not a Parquet file ({e})", field=ROOT_FIELD
                ) from None


def _check_groups(uri: str, groups: list[int], manifest: Manifest) -> None:
    """Row groups of the manifest's size (the last may be smaller): what the streaming
    reader's resume arithmetic relies on."""
    want = manifest.rows_per_group
    if any(n != want for n in groups[:-1]) or (groups and groups[-1] > want):
        raise UserError(
            f"{ROOT_FIELD}: shard {uri} has row groups of {sorted(set(groups))} images, the manifest says {want}",
            field=ROOT_FIELD,
        )


def _check_images(uri: str, table: Any, manifest: Manifest) -> None:
    try:
        decode(table.column("image"), manifest.shape)
    except ValueError:
        sizes = sorted({len(v) for v in table.column("image").to_pylist()[:1000]})
        raise UserError(
            f"{ROOT_FIELD}: shard {uri} holds images of {sizes} bytes, but the manifest's shape "
            f"{'x'.join(map(str, manifest.shape))} makes {manifest.image_bytes}",
            field=ROOT_FIELD,
        ) from None


def _check_rows(uri: str, s: ShardInfo, rows: int, names: set[str], manifest: Manifest) -> None:
    if rows != s.num_images:
        raise UserError(
            f"{ROOT_FIELD}: shard {uri} has {rows} rows, the manifest says {s.num_images}", field=ROOT_FIELD
        )
    need = {"index", "image"} | ({"label"} if manifest.labelled else set())
    if not need <= names:
        raise UserError(f"{ROOT_FIELD}: shard {uri} lacks column(s) {sorted(need - names)}", field=ROOT_FIELD)
    if "label" in names and not manifest.labelled:
        raise UserError(
            f"{ROOT_FIELD}: shard {uri} has a label column but the manifest says the pack is unlabelled "
            "(num_classes null): repack it",
            field=ROOT_FIELD,
        )


def verify_shards(root: str, manifest: Manifest) -> None:
    """Everything ``check_shards`` checks (sizes, footers: the quick check), then every
    shard's sha256, and every row as the workers will read it: each row group decoded (a
    corrupt page fails here, naming the shard), its indexes the consecutive run the manifest
    gives, each image the manifest's shape, each label a class. Reads the whole pack."""
    import hashlib
    import io

    import pyarrow.parquet as pq

    from ganops import storage

    check_shards(root, manifest, footers=True)
    base = locate_root(root)
    total = 0
    for s in manifest.shards:
        loc = base.child(s.file)
        h = hashlib.sha256()
        buf = io.BytesIO()
        with storage.errors_as_user(loc.uri, field=ROOT_FIELD), loc.fs.open_input_file(loc.path) as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
                buf.write(chunk)
        if h.hexdigest() != s.sha256:
            raise UserError(
                f"{ROOT_FIELD}: shard {loc.uri} does not match its sha256 in the manifest", field=ROOT_FIELD
            )
        _verify_rows(loc.uri, pq.ParquetFile(io.BytesIO(buf.getvalue())), s, manifest)
        total += s.num_images
    if total != manifest.num_images:
        raise UserError(
            f"{ROOT_FIELD}: the manifest says {manifest.num_images} images, its shards hold {total}", field=ROOT_FIELD
        )


def _verify_rows(uri: str, pf: Any, s: ShardInfo, manifest: Manifest) -> None:
    """Every row group of one shard decoded and checked against the manifest."""
    expected = s.first_index
    for g in range(pf.metadata.num_row_groups):
        try:
            table = pf.read_row_group(g)
            images = decode(table.column("image"), manifest.shape)
        except (OSError, ValueError, TypeError) as e:  # a corrupt page, a wrong image size
            raise UserError(f"{ROOT_FIELD}: shard {uri}, row group {g}: {str(e)[:200]}", field=ROOT_FIELD) from None
        index = table.column("index").to_numpy()
        if len(index) and (index[0] != expected or np.any(np.diff(index) != 1)):
            raise UserError(
                f"{ROOT_FIELD}: shard {uri}, row group {g}: indexes {int(index[0])}.. are not the run from "
                f"{expected} the manifest gives",
                field=ROOT_FIELD,
            )
        expected += len(images)
        if manifest.labelled:
            labels = table.column("label").to_numpy()
            if len(labels) and (labels.min() < 0 or labels.max() >= (manifest.num_classes or 0)):
                raise UserError(
                    f"{ROOT_FIELD}: shard {uri}, row group {g}: label {int(labels.max())} is not one of the "
                    f"manifest's {manifest.num_classes} classes",
                    field=ROOT_FIELD,
                )


def decode(images: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A column of raw image bytes (a pyarrow binary array, chunked or not) to uint8
    (N, C, H, W): a view of the column's buffer (a copy only to join a chunked column)."""
    import pyarrow as pa

    if isinstance(images, pa.ChunkedArray):
        images = images.combine_chunks()
    if isinstance(images, (pa.BinaryArray, pa.LargeBinaryArray)):
        n = len(images)
        buf = np.frombuffer(images.buffers()[2], dtype=np.uint8) if n else np.zeros(0, np.uint8)
        offsets = np.frombuffer(images.buffers()[1], dtype=np.int32 if isinstance(images, pa.BinaryArray) else np.int64)
        offsets = offsets[images.offset : images.offset + n + 1]
        size = int(np.prod(shape))
        if n and (offsets[-1] - offsets[0] != n * size or np.any(np.diff(offsets) != size)):
            raise ValueError(f"image bytes do not match the shape {list(shape)}")
        return buf[offsets[0] : offsets[0] + n * size].reshape(n, *shape)
    raise TypeError(f"an image column is a pyarrow binary array, not {type(images).__name__}")


# --- the writer's half (ganops.data.pack) -----------------------------------------------------


def shard_name(i: int) -> str:
    return SHARD_PATTERN.format(i)


def encode_shard(first_index: int, images: np.ndarray, labels: np.ndarray | None) -> bytes:
    """One shard's Parquet file: rows ``first_index``.. of ``images`` uint8 (N, C, H, W) and
    ``labels`` int64 (N,) (None: an unlabelled pack, no label column).

    Uncompressed, no dictionary and no statistics for the image column: raw pixels do not
    compress enough to pay for a codec on the CPUs that feed the GPUs, and min/max of
    image bytes would only bloat the footer. Same input, same bytes (no timestamps), which
    is what lets a resumed pack equal an uninterrupted one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or not n:
        raise ValueError(f"images must be a non-empty uint8 (N, C, H, W) array, got {images.dtype}{images.shape}")
    data = np.ascontiguousarray(images).reshape(-1)
    size = data.size // n
    # The binary column straight from the pixel buffer: offsets are multiples of one
    # image's size (int32: a shard stays far below 2 GiB, see pack.MAX_SHARD_MB).
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(size)
    image_col = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    cols = {"index": pa.array(np.arange(first_index, first_index + n, dtype=np.int64)), "image": image_col}
    if labels is not None:
        cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    stats = ["index"] + (["label"] if labels is not None else [])
    pq.write_table(
        table, sink, row_group_size=row_group_images(size), compression="none", use_dictionary=stats,
        write_statistics=stats,
    )  # fmt: skip
    return sink.getvalue().to_pybytes()


# --- the reader ganops.data registers (probe, load) ------------------------------------------


def probe(spec: DataSpec) -> ImageInfo:
    from ganops.data import ImageInfo, limited

    root = _root(spec)
    m = read_manifest(root)
    check_shards(root, m)
    return ImageInfo(m.shape, m.num_classes, limited(spec, m.num_images), m.class_names)


def load(spec: DataSpec) -> ArrayDataset:
    """The first ``spec.limit`` images (all without it) in memory: for small packs, tests and
    the evaluation's reference set. Training streams instead (``ganops.train.stream``)."""
    from ganops.data import limited

    root = _root(spec)
    m = read_manifest(root)
    return read_first(root, m, limited(spec, m.num_images))


def read_first(root: str, manifest: Manifest, n: int) -> ArrayDataset:
    """Images 0..n-1 (and labels) into memory, shard by shard."""
    import pyarrow.parquet as pq

    from ganops import storage
    from ganops.data import ArrayDataset, ImageInfo

    n = min(n, manifest.num_images)
    images = np.empty((n, *manifest.shape), np.uint8)
    labels = np.empty(n, np.int64) if manifest.labelled else None
    base = locate_root(root)
    done = 0
    for s in manifest.shards:
        if done >= n:
            break
        loc = base.child(s.file)
        cols = ["index", "image"] + (["label"] if labels is not None else [])
        with storage.errors_as_user(loc.uri, field=ROOT_FIELD), loc.fs.open_input_file(loc.path) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                if done >= n:
                    break
                t = pf.read_row_group(g, columns=cols)
                take = min(len(t), n - done)
                t = t.slice(0, take)
                images[done : done + take] = decode(t.column("image"), manifest.shape)
                if labels is not None:
                    labels[done : done + take] = t.column("label").to_numpy()
                done += take
    info = ImageInfo(manifest.shape, manifest.num_classes, n, manifest.class_names)
    if labels is not None and n and not (0 <= labels.min() and labels.max() < (manifest.num_classes or 0)):
        raise UserError(
            f"{ROOT_FIELD}: the pack at {root} has labels outside [0, {manifest.num_classes})", field=ROOT_FIELD
        )
    return ArrayDataset(images, labels, info)


def read_sample(root: str, manifest: Manifest, available: int, n: int, seed: int) -> np.ndarray:
    """About ``n`` images of the first ``available`` (all when there are fewer), as whole
    Parquet row groups drawn at random (seeded), then trimmed to ``n`` at random."""
    import pyarrow.parquet as pq

    from ganops import storage

    if available <= n:
        return read_first(root, manifest, available).images
    base = locate_root(root)
    groups: list[tuple[int, int, int]] = []  # (shard, row group, rows)
    metas = {}
    for si, s in enumerate(manifest.shards):
        if s.first_index >= available:
            break
        loc = base.child(s.file)
        with storage.errors_as_user(loc.uri, field=ROOT_FIELD), loc.fs.open_input_file(loc.path) as f:
            meta = pq.ParquetFile(f).metadata
        metas[si] = meta
        groups += [(si, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    rng = np.random.default_rng(seed)
    chosen, rows = [], 0
    for k in rng.permutation(len(groups)):
        chosen.append(groups[k])
        rows += groups[k][2]
        if rows >= n:
            break
    parts = []
    for si, g, _ in sorted(chosen):
        loc = base.child(manifest.shards[si].file)
        with storage.errors_as_user(loc.uri, field=ROOT_FIELD), loc.fs.open_input_file(loc.path) as f:
            t = pq.ParquetFile(f).read_row_group(g, columns=["index", "image"])
        idx = t.column("index").to_numpy()
        imgs = decode(t.column("image"), manifest.shape)
        parts.append(imgs[idx < available])
    images = np.concatenate(parts)
    if len(images) > n:
        images = images[np.sort(rng.permutation(len(images))[:n])]
    return images


def row_groups(manifest: Manifest) -> list[tuple[int, int, int]]:
    """Every (shard, row group, first index) of the pack: ``ganops data pack`` writes row
    groups of ``manifest.rows_per_group`` rows, so they follow from the manifest (no footer
    reads)."""
    rows = manifest.rows_per_group
    out = []
    for si, s in enumerate(manifest.shards):
        for g in range(-(-s.num_images // rows)):
            out.append((si, g, s.first_index + g * rows))
    return out


def read_row_group(fs: Any, path: str, group: int, columns: list[str]) -> Any:
    """One row group of one shard, as a pyarrow Table (what a Ray Data read task returns)."""
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group, columns=columns)


def concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables)
