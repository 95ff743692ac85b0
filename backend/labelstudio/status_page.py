"""The backend's status page (``GET /status``): one self-contained HTML document, no script at all.

It renders the snapshot of :class:`backend.services.status.StatusReader` (a JSON-able dict): the engine
and model version, each project's examples (thumbnails as ``data:`` URLs), its versions with the
cross-validated scores of its fine-tunes as an inline SVG plot, and the recent jobs with progress bars.
Every text shown comes from Label Studio or from users (labels, messages, hostnames) and is escaped;
the route sends a Content-Security-Policy that allows no script and no resource outside the page.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{font-size:18px;margin:0 0 4px}
header .meta{font-size:13px;color:#c6ccd8}header code{color:#fff}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 18px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px;color:#3b4456}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;
vertical-align:top;font-size:13px}th{color:#5b6475;font-weight:600}
.examples{display:flex;flex-wrap:wrap;gap:10px}.label{border:1px solid #eceef2;border-radius:6px;padding:6px 8px}
.label b{display:block;margin-bottom:4px}.label img{height:72px;margin-right:4px;border-radius:3px}
.muted{color:#7a8293}.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e8ebf0}
.s-running{background:#dbeafe;color:#1e40af}.s-queued{background:#fef3c7;color:#92400e}
.s-done{background:#dcfce7;color:#166534}.s-failed,.s-interrupted{background:#fee2e2;color:#991b1b}
.bar{width:160px;height:10px;background:#e8ebf0;border-radius:5px;overflow:hidden}
.bar>div{height:100%;background:#2563eb}.msg{max-width:520px;white-space:pre-wrap;word-break:break-word}
svg text{font:11px system-ui,sans-serif;fill:#5b6475}
"""

OPEN_STATES = ("queued", "running")  # jobs that still move: they get a progress bar
PLOT_W, PLOT_H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 190, 44, 16, 12, 24


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else ""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _project_link(project: dict) -> str:
    name = f"Project {int(project['id'])}"
    host = project.get("hostname") or ""
    if host.startswith(("http://", "https://")):  # never a javascript: or other scheme
        url = f"{host.rstrip('/')}/projects/{int(project['id'])}/"
        return f'<a href="{_e(url)}" rel="noreferrer">{_e(name)}</a>'
    return _e(name)


def _short_version(version: str) -> str:
    """``lite-effl0-de33-p5-ft2`` -> ``ft2``: the plot's axis has room for the fine-tune's number only."""
    return version.rsplit("-", 1)[-1] if "-ft" in version else version[-12:]


def versions_plot(runs: list[dict]) -> str:
    """Inline SVG: each fine-tune's cross-validated mIoU, the serving model's (grey) and the candidate's
    (green: promoted to a new version; red ring: not promoted)."""
    if not runs:
        return '<p class="muted">No fine-tune yet: "Start Training" in Label Studio runs one.</p>'
    inner_w, inner_h = PLOT_W - PAD_L - PAD_R, PLOT_H - PAD_T - PAD_B
    n = len(runs)

    def x(i: int) -> float:
        return PAD_L + (inner_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return PAD_T + inner_h * (1.0 - max(0.0, min(1.0, v)))

    parts = [
        f'<svg class="plot" role="img" aria-label="cross-validated mIoU per fine-tune" width="{PLOT_W}" '
        f'height="{PLOT_H}" viewBox="0 0 {PLOT_W} {PLOT_H}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        ty = y(tick)
        parts.append(f'<line x1="{PAD_L}" x2="{PLOT_W - PAD_R}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#eceef2"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{ty + 4:.1f}" text-anchor="end">{tick:.2f}</text>')

    # side by side: a candidate scoring like the model it was compared with would hide it
    serving = [(x(i) + 5, y(r["after"])) for i, r in enumerate(runs) if r["promoted"] and r["after"] is not None]
    if len(serving) > 1:
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in serving)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#16a34a" stroke-width="1.5"/>')
    for i, run in enumerate(runs):
        name = run.get("version") or f"job {run.get('job')} (not promoted)"
        tag = _short_version(run["version"]) if run.get("version") else f"job {run.get('job')}"
        parts.append(f'<text x="{x(i):.1f}" y="{PAD_T + inner_h + 13}" text-anchor="middle">{_e(tag)}</text>')
        if run["before"] is not None:
            parts.append(
                f'<circle class="run-before" cx="{x(i) - 5:.1f}" cy="{y(run["before"]):.1f}" r="4" fill="#9aa3b2">'
                f"<title>{_e(name)}: serving model {_score(run['before'])}</title></circle>"
            )
        if run["after"] is not None:
            kind = "promoted" if run["promoted"] else "rejected"
            paint = 'fill="#16a34a"' if run["promoted"] else 'fill="#fff" stroke="#dc2626" stroke-width="2"'
            parts.append(
                f'<circle class="run-after {kind}" cx="{x(i) + 5:.1f}" cy="{y(run["after"]):.1f}" r="5" {paint}>'
                f"<title>{_e(name)}: candidate {_score(run['after'])}</title></circle>"
            )
    parts.append("</svg>")
    parts.append(
        '<div class="muted">Cross-validated mIoU of each fine-tune, oldest first: grey, the model it was compared '
        "with; green, promoted to a new version; red ring, not promoted.</div>"
    )
    return "".join(parts)


def _examples(project: dict) -> str:
    by_label: dict[str, list[dict]] = {label: [] for label in project.get("labels") or []}
    for ex in project.get("examples") or []:
        by_label.setdefault(ex["label"], []).append(ex)
    if not by_label:
        return '<p class="muted">No labels known yet.</p>'
    cells = []
    for label, examples in sorted(by_label.items()):
        imgs = "".join(
            f'<img class="thumb" src="{_e(ex["thumbnail"])}" alt="task {int(ex["task_id"])}" '
            f'title="task {int(ex["task_id"])}, annotation {int(ex["annotation_id"])}">'
            if ex.get("thumbnail") and str(ex["thumbnail"]).startswith("data:image/jpeg;base64,")
            else f'<span class="muted">task {int(ex["task_id"])}</span> '
            for ex in examples
        )
        count = f"{len(examples)} example{'s' if len(examples) != 1 else ''}"
        hint = imgs or '<span class="muted">none yet: submit one annotation with this label</span>'
        cells.append(f'<div class="label" data-label="{_e(label)}"><b>{_e(label)}</b> {count}<br>{hint}</div>')
    return f'<div class="examples">{"".join(cells)}</div>'


def _versions_table(project: dict) -> str:
    serving = ' <span class="badge s-done">serving</span>'
    rows = [
        f"<tr><td><code>{_e(v['version'])}</code>{serving if v['active'] else ''}"
        f"</td><td>{_e(_when(v.get('created_at')))}</td><td>{_score(v.get('val_miou_before'))} → "
        f"{_score(v.get('val_miou_after'))}</td></tr>"
        for v in project.get("versions") or []
    ]
    if not rows:
        return ""
    head = "<tr><th>version</th><th>created</th><th>cross-validated mIoU (serving → new)</th></tr>"
    return f'<table class="versions">{head}{"".join(rows)}</table>'


def _project(project: dict) -> str:
    return (
        f'<section class="project" id="project-{int(project["id"])}"><h2>{_project_link(project)}</h2>'
        f"<div>serving <code>{_e(project.get('active_version'))}</code></div>"
        f"<h3>Examples per label</h3>{_examples(project)}"
        f"<h3>Versions</h3>{versions_plot(project.get('training_runs') or [])}{_versions_table(project)}</section>"
    )


def _job_row(job: dict) -> str:
    status = str(job.get("status") or "")
    fraction = job.get("fraction")
    if fraction is not None and status not in OPEN_STATES:  # a finished job: where it stopped, no bar
        progress = (
            f'<span class="muted">{int(job.get("progress_done") or 0)} / {int(job.get("progress_total") or 0)}</span>'
        )
    elif fraction is not None:
        pct = round(100 * float(fraction))
        total = job.get("progress_total")
        progress = (
            f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct}">'
            f'<div style="width:{pct}%"></div></div><span class="muted">{int(job.get("progress_done") or 0)}'
            f" / {int(total or 0)}</span>"
        )
    else:
        progress = '<span class="muted">–</span>'
    step = ""
    if job.get("step") is not None and job.get("steps"):
        step = f' <span class="muted">step {int(job["step"])}/{int(job["steps"])}</span>'
    left = job.get("time_left_s")
    left_text = f"about {_duration(float(left))} left" if left is not None else ""
    project = job.get("project_id")
    return (
        f'<tr class="job" data-status="{_e(status)}" data-kind="{_e(job.get("kind"))}"><td>{int(job["id"])}</td>'
        f"<td>{_e(job.get('kind'))}</td><td>{'' if project is None else int(project)}</td>"
        f'<td><span class="badge s-{_e(status)}">{_e(status)}</span></td><td>{progress}{step}</td>'
        f'<td class="left">{_e(left_text)}</td><td class="msg">{_e(job.get("message"))}</td>'
        f"<td>{_e(_when(job.get('finished_at') or job.get('started_at') or job.get('created_at')))}</td></tr>"
    )


def render_status(snapshot: dict, *, refresh_s: int = 0) -> str:
    """The status page for ``snapshot`` (see :meth:`backend.services.status.StatusReader.snapshot`)."""
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s > 0 else ""
    projects = "".join(_project(p) for p in snapshot.get("projects") or []) or (
        '<section><p class="muted">No project yet: connect this backend to a project in Label Studio '
        "(Settings → Model → Connect Model).</p></section>"
    )
    jobs = snapshot.get("jobs") or []
    job_rows = "".join(_job_row(j) for j in jobs) or '<tr><td colspan="8" class="muted">No job yet.</td></tr>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
        f"<title>dcsam backend status</title><style>{STYLE}</style></head><body>"
        '<header><h1>dcsam backend</h1><div class="meta">engine <code id="engine">'
        f"{_e(snapshot.get('engine'))}</code> ({_e(snapshot.get('engine_reason'))}) · base model version "
        f'<code id="base-version">{_e(snapshot.get("base_version"))}</code> · '
        f"{_e(_when(snapshot.get('generated_at')))}</div></header><main>{projects}"
        '<section><h2>Jobs</h2><table class="jobs"><tr><th>id</th><th>kind</th><th>project</th><th>state</th>'
        "<th>progress</th><th>time left</th><th>message</th><th>when</th></tr>"
        f"{job_rows}</table></section></main></body></html>"
    )
