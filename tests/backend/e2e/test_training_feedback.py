"""End-to-end: what a real Label Studio 1.23.2 does with the backend's answer to "Start Training".

Label Studio answers the browser 200 with an empty body whatever the backend said; a non-2xx answer sets the
model's state to Error and keeps requests' error string (status line included, body dropped) as its
``error_message``; the next read of the model (list or detail) re-checks /health and /setup and shows it
Connected again. These tests pin that down, so a Label Studio upgrade that changes it is noticed.
"""

from __future__ import annotations

import sqlite3

import pytest

from dcsam.io import read_mask
from tests.support.label_studio import LEGACY_TOKEN, Backend
from tests.support.regions import brush_result

pytestmark = pytest.mark.slow

BRUSH = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""


def _stored_state(ls, ml_id: int) -> tuple[str, str | None]:
    """The model's state and error_message as Label Studio stored them (read-only: its API re-checks them)."""
    con = sqlite3.connect(f"file:{ls.data / 'label_studio.sqlite3'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT state, error_message FROM ml_mlbackend WHERE id=?", (ml_id,)).fetchone()
    finally:
        con.close()


def test_a_refused_start_training_reaches_label_studio(ls, workdir, data_dir):
    perseg = data_dir / "perseg-mini"
    backend = Backend(
        workdir, "feedback", LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=LEGACY_TOKEN, DCSAM_ENGINE="lite"
    )
    try:
        project = ls.create_project("training feedback", BRUSH)
        tasks = ls.upload(project, [perseg / f"cat_0{i}.jpg" for i in range(3)])
        ls.annotate(tasks["cat_00"]["id"], brush_result(read_mask(perseg / "cat_00.png"), "cat"))
        ml = ls.connect_backend(project, backend.url)
        assert ml["state"] == "CO", ml

        r = ls.call("POST", f"/api/ml/{ml['id']}/train")
        assert r.status_code == 200 and r.content == b""  # what the browser gets: "Request Sent! Response: {}"
        state, error = _stored_state(ls, ml["id"])
        assert state == "ER"  # our 422
        assert error.startswith("422 Client Error: not enough accepted annotations")
        assert "Submit 2 more with 'cat'" in error  # the reason phrase carried the why and what to do
        [job] = backend.get(f"/jobs?project={project}&kind=train").json()["jobs"]
        assert job["status"] == "failed" and job["message"] in error
        assert "Submit 2 more with &#x27;cat&#x27;" in backend.get("/status?refresh=0").text
        # any read of the model re-checks it: Label Studio's UI never shows the Error
        assert ls.call("GET", f"/api/ml?project={project}").json()[0]["state"] == "CO"
        assert _stored_state(ls, ml["id"]) == ("CO", None)

        # enough annotations: queued (Label Studio stores Training until the next read)
        for name in ("cat_01", "cat_02"):
            ls.annotate(tasks[name]["id"], brush_result(read_mask(perseg / f"{name}.png"), "cat"))
        ls.call("POST", f"/api/ml/{ml['id']}/train")
        assert _stored_state(ls, ml["id"])[0] == "TR"
        jobs = backend.get(f"/jobs?project={project}&kind=train").json()["jobs"]
        assert len(jobs) == 2 and jobs[0]["status"] in ("queued", "running", "done")
    finally:
        backend.close()
