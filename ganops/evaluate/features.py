"""Inception features of uint8 images, in batches, on the CPU or a GPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ganops.evaluate.inception import FEATURE_DIM, NUM_LOGITS, FIDInceptionV3, preprocess


@dataclass
class Features:
    """pool3 float32 [n, 2048] (FID, KID, precision/recall) and logits float32 [n, 1008] (IS)."""

    pool3: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.pool3)

    @staticmethod
    def concat(parts: list[Features]) -> Features:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Features(np.empty((0, FEATURE_DIM), np.float32), np.empty((0, NUM_LOGITS), np.float32))
        return Features(np.concatenate([p.pool3 for p in parts]), np.concatenate([p.logits for p in parts]))


class FeatureExtractor:
    def __init__(self, net: FIDInceptionV3, device: torch.device, batch_size: int = 100) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        # channels_last: oneDNN and cuDNN run these convolutions faster in NHWC (about a third
        # faster on the CPU here); same weights, another layout.
        self.net = net.to(device, memory_format=torch.channels_last).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images_uint8: np.ndarray, on_batch: Callable[[int], None] | None = None) -> Features:
        """uint8 [n, C, H, W] (C = 1 or 3), the pixels as a PNG file would hold them.

        ``on_batch(k)`` after each batch of k images: a progress line's count.
        """
        n = len(images_uint8)
        pool3 = np.empty((n, FEATURE_DIM), dtype=np.float32)
        logits = np.empty((n, NUM_LOGITS), dtype=np.float32)
        for i in range(0, n, self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images_uint8[i : i + self.batch_size])).to(self.device)
            x = preprocess(batch).contiguous(memory_format=torch.channels_last)
            p, lg = self.net(x)
            pool3[i : i + len(batch)] = p.float().cpu().numpy()
            logits[i : i + len(batch)] = lg.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(batch))
        return Features(pool3, logits)
