"""Write an OCI image archive (an image layout in a tar stream) for ``ctr images import -``.

No registry serves images to the local cluster and no Docker engine builds them: image.sh
makes uncompressed layer tarballs from root file systems, and this turns a descriptor

    {"name": "docker.io/library/ganops:0.1.0", "layers": ["/…/layer.tar", …],
     "config": {"User": "1000:100", "Env": […], "Cmd": […], …}}

into the layout (oci-layout, blobs/sha256/…, index.json) on stdout, streamed, so the
gigabytes of a layer are read once and never copied to disk again before containerd
stores them.

    python oci.py [--skip DIGEST ...] DESCRIPTOR.json | ctr -n k8s.io images import -
    python oci.py --manifest-digest DESCRIPTOR.json     # what `ctr images ls` will list
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: gzip costs minutes on 2 CPUs
INDEX = "application/vnd.oci.image.index.v1+json"
PLATFORM = {"architecture": "amd64", "os": "linux"}
Blob = tuple[dict[str, Any], bytes]  # a blob's OCI descriptor, and the blob


def layer_digest(path: Path) -> str:
    """The layer's sha256 (its digest and, uncompressed, its diff ID): image.sh's sidecar
    file LAYER.sha256 when it is there, else computed."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        return "sha256:" + sidecar.read_text().strip()
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(data: bytes, media_type: str) -> Blob:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}, data


def _add(tar: tarfile.TarFile, name: str, size: int, src: BinaryIO) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, src)


def _image(descriptor: dict[str, Any]) -> tuple[list[Path], list[str], Blob, Blob]:
    """The layers, their digests, and the config and manifest blobs (descriptor, bytes)."""
    layers = [Path(p) for p in descriptor["layers"]]
    digests = [layer_digest(p) for p in layers]
    config = {**PLATFORM, "config": descriptor["config"], "rootfs": {"type": "layers", "diff_ids": digests}}
    config_blob = _blob(json.dumps(config, sort_keys=True).encode(), CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_blob[0],
        "layers": [
            {"mediaType": LAYER, "digest": d, "size": p.stat().st_size} for p, d in zip(layers, digests, strict=True)
        ],
    }
    return layers, digests, config_blob, _blob(json.dumps(manifest, sort_keys=True).encode(), MANIFEST)


def manifest_digest(descriptor: dict[str, Any]) -> str:
    """The digest containerd lists for the image once imported (to skip importing it again)."""
    return _image(descriptor)[3][0]["digest"]


def write_archive(descriptor: dict[str, Any], out: BinaryIO, skip: frozenset[str] = frozenset()) -> None:
    """The image of ``descriptor`` as an OCI layout tar, written to ``out``, without the
    layers in ``skip`` (digests of blobs the importing store has: it resolves them there)."""
    layers, digests, (config_desc, config_bytes), (manifest_desc, manifest_bytes) = _image(descriptor)
    name: str = descriptor["name"]
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            **manifest_desc,
            "platform": PLATFORM,
            # containerd names the imported image after the first; the second is the standard one.
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }],
    }  # fmt: skip
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        _add(tar, "oci-layout", len(layout), io.BytesIO(layout))
        for path, digest in zip(layers, digests, strict=True):
            if digest in skip:
                continue
            with path.open("rb") as f:
                _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", path.stat().st_size, f)
        for desc, data in ((config_desc, config_bytes), (manifest_desc, manifest_bytes)):
            _add(tar, f"blobs/sha256/{desc['digest'].removeprefix('sha256:')}", len(data), io.BytesIO(data))
        index_bytes = json.dumps(index).encode()
        _add(tar, "index.json", len(index_bytes), io.BytesIO(index_bytes))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("descriptor", type=Path)
    p.add_argument("--manifest-digest", action="store_true", help="print the manifest's digest, write nothing")
    p.add_argument("--skip", action="append", default=[], metavar="DIGEST", help="a layer to leave out")
    args = p.parse_args(argv)
    descriptor = json.loads(args.descriptor.read_text())
    if args.manifest_digest:
        print(manifest_digest(descriptor))
    else:
        write_archive(descriptor, sys.stdout.buffer, frozenset(args.skip))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
