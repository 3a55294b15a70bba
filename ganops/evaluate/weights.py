"""Load the FID Inception weights from a local path or s3://, checked against a sha256.

FID values are only comparable when every run uses the same network, bit for bit, so the
file is pinned: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID
graph of 2015-12-05 ported to PyTorch), whose sha256 starts with the 8 hex digits in its
name, as torch.hub's naming convention has it. With no path given, the file is downloaded
once per machine into ``$GANOPS_CACHE/fid/`` (``ganops.evaluate.fetch``).
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

from ganops import storage
from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.evaluate.inception import FIDInceptionV3

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
PINNED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

WEIGHTS_FIELD = "eval.inception_weights"
SHA_FIELD = "eval.inception_sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_weights(
    uri: str | None, expected_sha256: str | None = None, *, field: str = WEIGHTS_FIELD, sha_field: str = SHA_FIELD
) -> tuple[bytes, str]:
    """The file's bytes and sha256, after checking it against ``expected_sha256`` (default: pinned)."""
    expected = (expected_sha256 or PINNED_SHA256).lower()
    if not uri:
        from ganops.evaluate import fetch  # imports this module: not at the top

        # Checked against ``expected`` by the fetch, and once more below like any other file.
        uri = str(fetch.ensure(expected, field=field))
    if "://" in uri and not storage.is_s3(uri):
        raise UserError(f"{field}: unsupported scheme in {uri!r} (use a local path or s3://bucket/key)")
    try:
        data = storage.read_bytes(storage.locate(uri))
    except (FileNotFoundError, IsADirectoryError, OSError) as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) or "not found" in str(e).lower() else str(e)
        raise UserError(
            f"{field}: cannot read {uri} ({reason}); download {WEIGHTS_FILE} from {WEIGHTS_URL} and point {field} at it"
        ) from None
    digest = sha256_hex(data)
    if digest != expected:
        pinned = " (the pinned pytorch-fid file)" if expected == PINNED_SHA256 else ""
        raise UserError(
            f"{field}: {uri} has sha256 {digest}, expected {expected}{pinned}. FID is only comparable with "
            f"the exact weights: download {WEIGHTS_FILE} from {WEIGHTS_URL}"
            + ("" if expected != PINNED_SHA256 else f", or set {sha_field} for a file you trust")
        )
    return data, digest


def load_inception(
    uri: str | None, expected_sha256: str | None = None, *, field: str = WEIGHTS_FIELD, sha_field: str = SHA_FIELD
) -> tuple[FIDInceptionV3, str]:
    """The network in eval mode on the CPU, and the weights' sha256."""
    import torch

    from ganops.evaluate.inception import FIDInceptionV3

    data, digest = read_weights(uri, expected_sha256, field=field, sha_field=sha_field)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise UserError(f"{field}: {uri} is not a PyTorch state dict ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{field}: {uri} holds a {type(state).__name__}, not a state dict")
    net = FIDInceptionV3()
    # Files saved before BatchNorm had a batch counter lack it; it is unused at inference.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected:
        raise UserError(
            f"{field}: {uri} is not the FID Inception-v3 state dict "
            f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(unexpected[:3]) or '-'})"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{field}: {uri} does not fit the FID Inception-v3 ({str(e).splitlines()[0][:200]})") from None
    return net.eval().requires_grad_(False), digest


def _key_mismatch(net: FIDInceptionV3, state: dict[str, object]) -> tuple[list[str], list[str]]:
    want = set(net.state_dict())
    have = set(state)
    return sorted(want - have), sorted(have - want)
