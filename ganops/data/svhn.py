"""SVHN cropped digits: ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB v5).

``X`` is 32 x 32 x 3 x N uint8 (row, column, channel, image); ``y`` is N x 1 with the
digits 1-9 as themselves and 0 stored as 10. scipy is imported only here, and only when an
SVHN file is actually read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganops.data import ArrayDataset, ImageInfo, limited
from ganops.data.download import Remote, obtain
from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
MD5 = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}
NUM_CLASSES = 10
SHAPE = (3, 32, 32)
CLASS_NAMES = [str(d) for d in range(10)]


def file_name(split: str) -> str:
    return f"{split}_32x32.mat"


def probe(spec: DataSpec) -> ImageInfo:
    path = _file(spec)
    # whosmat reads the variable headers only, not the 180 MB of pixels.
    found = {name: (shape, cls) for name, shape, cls in _mat_call(path, "whosmat")}
    n = _check_x_shape(path, found.get("X", (None, None))[0])
    y_shape = found.get("y", (None, None))[0]
    if y_shape is None or tuple(y_shape) not in {(n, 1), (1, n), (n,)}:
        raise UserError(f"{path}: expected a variable y of shape ({n}, 1), found {y_shape or 'none'}")
    return ImageInfo(SHAPE, NUM_CLASSES, limited(spec, n), CLASS_NAMES)


def load(spec: DataSpec) -> ArrayDataset:
    path = _file(spec)
    mat = _mat_call(path, "loadmat", variable_names=("X", "y"))
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise UserError(f"{path}: expected X as uint8, found {getattr(x, 'dtype', type(x).__name__)}")
    n = _check_x_shape(path, x.shape)
    if not isinstance(y, np.ndarray) or y.size != n or y.squeeze().ndim > 1:
        raise UserError(f"{path}: expected y with {n} labels, found {getattr(y, 'shape', None)}")
    y = y.reshape(-1)
    digits = y.astype(np.int64)
    if np.any(digits != y) or (n and (digits.min() < 0 or digits.max() > 10)):
        raise UserError(f"{path}: y must hold the digits 1-10 (10 meaning 0)")
    k = limited(spec, n)
    # (row, col, channel, n) -> (n, channel, row, col); loadmat's arrays are Fortran-ordered,
    # so this copy is also what makes the result C-contiguous.
    images = np.ascontiguousarray(x[..., :k].transpose(3, 2, 0, 1))
    labels = digits[:k] % 10  # SVHN stores the digit 0 as 10
    return ArrayDataset(images, labels, ImageInfo(SHAPE, NUM_CLASSES, k, CLASS_NAMES))


def _file(spec: DataSpec) -> Path:
    def find(root: Path, split: str) -> list[Path] | None:
        path = root / file_name(split)
        return [path] if path.is_file() else None

    (path,) = obtain(
        spec,
        find,
        expected=lambda split: [file_name(split)],
        remotes=lambda split: [Remote(file_name(split), (BASE_URL + file_name(split),), MD5[file_name(split)])],
    )
    return path


def _mat_call(path: Path, fn: str, **kwargs: Any) -> Any:
    import scipy.io  # lazy: only SVHN needs scipy, and it is slow to import

    try:
        return getattr(scipy.io, fn)(path, **kwargs)
    except NotImplementedError:
        raise UserError(
            f"{path}: a MATLAB v7.3 (HDF5) file; the official SVHN files are v5, as scipy.io.savemat writes"
        ) from None
    except Exception as e:  # noqa: BLE001 - MatReadError, ValueError, zlib and struct errors on garbage
        raise UserError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None


def _check_x_shape(path: Path, shape: tuple[int, ...] | None) -> int:
    if shape is None or len(shape) != 4 or tuple(shape[:3]) != (32, 32, 3):
        raise UserError(f"{path}: expected a variable X of shape 32 x 32 x 3 x N, found {shape or 'none'}")
    return int(shape[3])
