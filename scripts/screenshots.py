"""The README's screenshots, taken from a live Label Studio 1.23.2 and `dcsam serve` (lite engine).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts both on loopback with fresh state (Label Studio from .venv-ls, as the end-to-end tests do), drives
Label Studio's own UI in headless Chromium (Debian's /usr/bin/chromium through Playwright) and writes:

    01-connect.png        the model connected in Project → Settings → Model
    02-example.png        one accepted annotation: the project's first example
    03-predictions.png    the next task opened in the editor, pre-annotated by the backend (its version on the tab)
    04-start-training.png what Label Studio shows after "Start Training" (always "Request Sent! Response: {}")
    05-training.png       the backend's status page: the refusal (too few annotations), then the fine-tune
    06-status.png         the status page once the fine-tune has finished: examples, versions plot, jobs

The images come from the test fixtures' perseg-mini (``$DCSAM_TEST_DATA``, else ../shared/data).
Each PNG is kept under 300 KB (reduced to a 256-colour palette when larger).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcsam.io import read_mask  # noqa: E402
from tests.support.browser import launch_chromium  # noqa: E402
from tests.support.data import DATA  # noqa: E402
from tests.support.label_studio import LEGACY_TOKEN, PASSWORD, USER, Backend, LabelStudio  # noqa: E402
from tests.support.regions import brush_result  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat" background="#ff6a00"/></BrushLabels></View>"""
MAX_BYTES = 300_000
VIEWPORT = {"width": 1280, "height": 800}


def data_dir() -> Path:
    if (DATA / "perseg-mini").is_dir():
        return DATA / "perseg-mini"
    sys.exit(f"perseg-mini not found in {DATA}: set DCSAM_TEST_DATA (scripts/fetch_test_data.py makes one)")


def save_png(png: bytes, path: Path) -> None:
    """Write ``png``; a larger one than MAX_BYTES is reduced to a 256-colour palette first."""
    if len(png) > MAX_BYTES:
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            buf, "PNG", optimize=True
        )
        png = buf.getvalue()
    path.write_bytes(png)
    print(f"{path} ({len(png) // 1024} KB)", flush=True)


def wait_job(backend: Backend, job_id: int, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = backend.get(f"/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(1)
    raise RuntimeError(f"job {job_id} still running after {timeout} s")


def open_task(page, ls: LabelStudio, project: int, task_id: int) -> None:
    page.goto(f"{ls.url}/projects/{project}/data?tab=1&task={task_id}")
    page.get_by_role("button", name="Submit").or_(page.get_by_role("button", name="Update")).first.wait_for()
    page.wait_for_timeout(2500)  # the image and its regions are drawn after the buttons


def start_training_in_ui(page, ls: LabelStudio, project: int) -> None:
    page.goto(f"{ls.url}/projects/{project}/settings/ml")
    page.get_by_label("Machine learning model options").click()
    page.get_by_text("Start Training", exact=True).click()
    page.get_by_role("button", name="Start Training").last.click()
    page.get_by_text("Request Sent!").wait_for()
    page.wait_for_timeout(2000)  # the card's menu fades out behind the dialog


def run(out: Path, work: Path) -> None:
    perseg = data_dir()
    out.mkdir(parents=True, exist_ok=True)
    print("starting Label Studio 1.23.2 and dcsam serve (lite) ...", flush=True)
    ls = LabelStudio(work)
    backend = Backend(work, "shots", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_TOKEN, DCSAM_ENGINE="lite")
    from playwright.sync_api import sync_playwright

    try:
        project = ls.create_project("Cats", CONFIG)
        tasks = ls.upload(project, [perseg / f"cat_0{i}.jpg" for i in range(3)])
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(120_000)  # Label Studio's UI is slow on a busy 2-core machine
            page.goto(ls.url + "/user/login/")
            page.fill('input[name="email"]', USER)
            page.fill('input[name="password"]', PASSWORD)
            page.click('button[type="submit"]')
            page.wait_for_load_state("networkidle")
            try:
                take(page, ls, backend, project, tasks, perseg, out)
            except Exception:
                page.screenshot(path=str(work / "failure.png"))
                print(f"failed; the page then: {work / 'failure.png'} (kept with --keep)", flush=True)
                raise
            browser.close()
    finally:
        backend.close()
        ls.close()


def take(page, ls: LabelStudio, backend: Backend, project: int, tasks: dict, perseg: Path, out: Path) -> None:
    # 1. connect the model, in Label Studio's own form
    page.goto(f"{ls.url}/projects/{project}/settings/ml")
    page.get_by_text("Connect Model", exact=True).click()
    page.fill('input[name="title"]', "dcsam")
    page.fill('input[name="url"]', backend.url)
    page.get_by_text("Validate and Save", exact=True).click()
    page.get_by_text("Connected", exact=True).wait_for()
    save_png(page.screenshot(clip={"x": 0, "y": 0, "width": 1000, "height": 480}), out / "01-connect.png")

    # 2. one example: an accepted annotation of the first cat
    first, second, third = (tasks[f"cat_0{i}"]["id"] for i in range(3))
    ls.annotate(first, brush_result(read_mask(perseg / "cat_00.png"), "cat"))
    open_task(page, ls, project, first)
    save_png(page.screenshot(), out / "02-example.png")

    # 3. the next task in the editor: Label Studio asks the backend when it has no prediction yet
    open_task(page, ls, project, second)
    deadline = time.monotonic() + 90  # the first prediction loads the model: seconds on a busy CPU
    while not ls.predictions(second) and time.monotonic() < deadline:
        time.sleep(1)
    if ls.predictions(second):
        open_task(page, ls, project, second)  # drawn with the prediction now stored
    else:  # Label Studio did not ask on opening: the Data Manager's "Retrieve Predictions" action
        print("no prediction on opening the task: retrieving it through the Data Manager action", flush=True)
        ls.retrieve_predictions(project, [second])
        open_task(page, ls, project, second)
    save_png(page.screenshot(), out / "03-predictions.png")

    # 4. "Start Training" with one annotated task: refused at once (422); Label Studio shows nothing of it
    start_training_in_ui(page, ls, project)
    save_png(page.screenshot(), out / "04-start-training.png")

    # 5. the refusal on the status page; then two more accepted annotations and a fine-tune
    for task_id, name in ((second, "cat_01"), (third, "cat_02")):
        ls.annotate(task_id, brush_result(read_mask(perseg / f"{name}.png"), "cat"))
    start_training_in_ui(page, ls, project)
    jobs = backend.get("/jobs?kind=train").json()["jobs"]
    train = next(j for j in jobs if j["status"] in ("queued", "running", "done"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # catch it running, if it is not done yet
        job = backend.get(f"/jobs/{train['id']}").json()
        if job["status"] not in ("queued", "running") or job["progress_done"] >= 2:  # its time left is known
            break
        time.sleep(0.5)
    page.goto(f"{backend.url}/status?refresh=0")
    save_png(page.locator("section:has(table.jobs)").screenshot(), out / "05-training.png")

    # 6. once it has finished: the whole status page
    job = wait_job(backend, train["id"])
    print(f"fine-tune job {job['id']}: {job['status']}: {job['message']}", flush=True)
    page.goto(f"{backend.url}/status?refresh=0")
    height = min(1400, page.evaluate("document.documentElement.scrollHeight"))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    save_png(page.screenshot(), out / "06-status.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs, failure screenshot)")
    args = parser.parse_args()
    if not Path("/usr/bin/chromium").exists():
        sys.exit("needs Debian's Chromium: apt-get install -y chromium")
    if args.keep:  # for debugging: the logs of both servers and the failure's screenshot stay
        work = Path(tempfile.mkdtemp(prefix="dcsam-shots-"))
        print(f"work folder: {work}", flush=True)
        run(args.out, work)
        return
    with tempfile.TemporaryDirectory(prefix="dcsam-shots-") as tmp:
        run(args.out, Path(tmp))


if __name__ == "__main__":
    main()
