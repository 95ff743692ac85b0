"""Label Studio projects for the fake Label Studio: brush-labelled tasks of a red box on noise."""

from __future__ import annotations

import numpy as np

from tests.support.configs import BRUSH_CONFIG
from tests.support.fakes import image_bytes
from tests.support.regions import annotated_task, brush_region


def scene(i: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    img = (rng.random((size, size, 3)) * 60 + 40).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    y, x = 20 + i % 30, 15 + (i * 7) % 40
    mask[y : y + 30, x : x + 35] = True
    img[mask] = (200, 60, 50)
    return img, mask


def brush_project(fake_ls, project: int, n: int, *, annotated: int = 1) -> list[int]:
    """n tasks (ids project*1000+1..), the first ``annotated`` of them with a brush annotation."""
    ids = []
    fake_ls.label_configs[project] = BRUSH_CONFIG
    for i in range(n):
        task_id = project * 1000 + i + 1
        img, mask = scene(i)
        path = f"/data/upload/{project}/t{task_id}.jpg"
        fake_ls.files[path] = image_bytes(img)
        if i < annotated:
            fake_ls.tasks.append(annotated_task(task_id, project, path, [brush_region(mask, "cat")]))
        else:
            fake_ls.tasks.append({"id": task_id, "project": project, "data": {"image": path}, "annotations": []})
        ids.append(task_id)
    return ids
