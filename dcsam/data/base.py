"""Episodic datasets: each item is one query and K supports that share a class.

An item is a dict of tensors at the dataset's square ``image_size``:
  query_image (3, S, S) float in [0, 1]; query_mask (S, S) float: 1 target, 0 other, 255 ignore;
  support_images (K, 3, S, S); support_masks (K, S, S) in {0, 1}; class_id (int); key (str: a
  stable id of the images, so frozen features can be cached when there is no augmentation).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IGNORE = 255


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, size, size) float in [0, 1] (bilinear, like the reference)."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1).float().div_(255.0)


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """uint8/bool (H, W) -> (size, size) float, nearest neighbour (keeps 0/1/255 labels)."""
    resized = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(resized).float()


def make_item(query_image, query_mask, supports, class_id: int, key: str, size: int) -> dict:
    """Build an item from numpy images/masks (supports: list of (image, mask))."""
    return {
        "query_image": image_tensor(query_image, size),
        "query_mask": mask_tensor(query_mask, size),
        "support_images": torch.stack([image_tensor(i, size) for i, _ in supports]),
        "support_masks": torch.stack([(mask_tensor(m, size) == 1).float() for _, m in supports]),
        "class_id": int(class_id),
        "key": key,
    }
