"""The oldest supported cvat-sdk / cvat-cli (2.23), in its own environment, against the loopback CVAT.

``scripts/setup_cvat_sdk_venv.sh 2.23.0 .venv-cvat-2.23`` builds it (``DCSAM_CVAT_OLD_VENV`` points elsewhere);
without it these tests are skipped and say so. The newest (the main environment's) runs everywhere else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dcsam.io import read_mask
from dcsam.masks import iou
from tests.support.cvat_server import FakeCvat, task_from_files, uploaded_masks

pytest.importorskip("cvat_sdk", reason="the cvat extra is not installed: pip install -e '.[cvat]'")

ROOT = Path(__file__).resolve().parents[3]
OLDEST = "2.23.0"
OLD_VENV = Path(os.environ.get("DCSAM_CVAT_OLD_VENV") or ROOT / ".venv-cvat-2.23")
PYTHON = OLD_VENV / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(),
    reason=f"no cvat-sdk {OLDEST} environment at {OLD_VENV}: scripts/setup_cvat_sdk_venv.sh {OLDEST} {OLD_VENV}",
)


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([str(PYTHON), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def auto_annotate_command() -> list[str]:
    """``task auto-annotate`` (newer CLIs) or the top-level ``auto-annotate`` (2.23), whichever this CLI has."""
    listing = run("-m", "cvat_cli", "task", "--help").stdout
    return ["task", "auto-annotate"] if "auto-annotate" in listing else ["auto-annotate"]


def test_the_old_environment_holds_the_oldest_sdk_without_tracking_functions():
    version = run("-c", "import cvat_sdk.version as v; print(v.VERSION)")
    assert version.stdout.strip() == OLDEST, version.stderr
    assert auto_annotate_command() == ["auto-annotate"]
    tracker = run("-c", "from backend.cvat.tracker import create; create(engine='lite')")
    assert tracker.returncode != 0 and f"cvat-sdk {OLDEST} has no tracking functions" in tracker.stderr


@pytest.mark.slow
def test_the_oldest_cli_auto_annotates_with_masks_and_polygons(perseg_examples: Path, data_dir: Path, tmp_path):
    cvat = FakeCvat(version=OLDEST).start()
    try:
        queries = [data_dir / "perseg-mini" / f"cat_{i:02d}.jpg" for i in (1, 2)]
        for poly in (False, True):
            task = task_from_files(cvat, "cat", ["cat"], queries)
            cmd = ["-m", "cvat_cli", "--server-host", cvat.url, "--auth", f"{cvat.user}:{cvat.password}"]
            cmd += [*auto_annotate_command(), str(task.id), "--function-module", "backend.cvat.func"]
            cmd += ["-p", f"examples=str:{perseg_examples}", "-p", "engine=str:lite", "--allow-unmatched-labels"]
            cmd += ["--conv-mask-to-poly"] if poly else []
            done = run(*cmd)
            assert done.returncode == 0, done.stderr[-3000:]
            assert {s["type"] for s in task.shapes} == {"polygon" if poly else "mask"}
            masks = uploaded_masks(cvat, task)
            scores = [iou(masks[(k, "cat")], read_mask(p.with_suffix(".png"))) for k, p in enumerate(queries)]
            print(f"cvat-sdk {OLDEST}, {'polygons' if poly else 'masks'}: IoU {[round(s, 3) for s in scores]}")
            assert np.min(scores) > 0.85
    finally:
        cvat.close()
