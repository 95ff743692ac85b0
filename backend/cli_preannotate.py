"""``dcsam preannotate --project ID``: start a whole-project pre-annotation job in a running backend and
follow it with a progress bar.

The job runs inside the backend (one writer to the accelerator, resumable across restarts); this command
only starts it and watches ``GET /jobs/<id>``. Leaving it (Ctrl-C) leaves the job running.

``--ray [ADDRESS]`` asks the backend to run the job's downloads and inference on Ray (see
:mod:`backend.services.preannotate_ray`): without an address on the backend's ``DCSAM_RAY_ADDRESS`` or, when
that is unset, on a Ray the backend starts on its own machine; ``local`` always the latter; an address must
be the backend's ``DCSAM_RAY_ADDRESS`` (the cluster receives the Label Studio token, so a request cannot
choose another one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import requests

FINAL = ("done", "failed", "cancelled", "interrupted", "skipped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcsam preannotate",
        description="Pre-annotate every task of a Label Studio project that lacks a prediction "
        "of the backend's current model_version (runs as a job in the backend).",
    )
    p.add_argument("--project", required=True, type=int, help="Label Studio project id")
    default_url = os.environ.get("DCSAM_BACKEND_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '9090')}"
    p.add_argument(
        "--backend",
        default=default_url,
        help=f"URL of the running `dcsam serve` (default $DCSAM_BACKEND_URL or {default_url})",
    )
    p.add_argument(
        "--user", default=os.environ.get("BASIC_AUTH_USER"), help="basic auth user (default $BASIC_AUTH_USER)"
    )
    p.add_argument(
        "--password", default=os.environ.get("BASIC_AUTH_PASS"), help="basic auth password (default $BASIC_AUTH_PASS)"
    )
    p.add_argument("--page-size", type=int, default=None, help="tasks per page / per import (default: the backend's)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run the job on Ray: the backend's DCSAM_RAY_ADDRESS, else a local Ray started by the backend; "
        "'local', or the configured address itself (default: as the backend is configured)",
    )
    p.add_argument("--no-wait", action="store_true", help="start the job, print its id, exit")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks (default 1)")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"dcsam preannotate: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Start the job and follow it, with arguments parsed by :func:`build_parser`'s options."""
    if args.project <= 0:
        return _fail(f"--project must be a positive id, got {args.project}")
    if args.page_size is not None and not 1 <= args.page_size <= 1000:
        return _fail("--page-size must be between 1 and 1000")
    if args.poll <= 0:
        return _fail("--poll must be > 0")
    base = args.backend.rstrip("/")
    if not base.startswith(("http://", "https://")):
        return _fail(f"--backend {base!r} must start with http:// or https://")
    auth = (args.user, args.password) if args.user and args.password else None
    session = requests.Session()
    session.auth = auth
    body: dict[str, object] = {"project": args.project}
    if args.page_size:
        body["page_size"] = args.page_size
    if args.ray is not None:
        if not args.ray.strip() or len(args.ray) > 300:
            return _fail("--ray ADDRESS must be a Ray address (at most 300 characters), 'local' or nothing")
        body["ray"] = args.ray
    try:
        r = session.post(f"{base}/jobs/preannotate", json=body, timeout=30)
    except requests.RequestException as exc:
        return _fail(f"cannot reach the backend at {base}: {exc}")
    if r.status_code == 401:
        return _fail("the backend wants basic auth: pass --user/--password (or set BASIC_AUTH_USER/BASIC_AUTH_PASS)")
    if r.status_code != 202:
        return _fail(f"POST {base}/jobs/preannotate: HTTP {r.status_code}: {r.text[:300]}")
    job = r.json()
    print(f"pre-annotation job {job['id']} for project {args.project} ({job['status']})", file=sys.stderr)
    if args.ray is not None and (job.get("params") or {}).get("ray") != args.ray:
        print(
            f"dcsam preannotate: warning: job {job['id']} does not carry --ray {args.ray} (a job already queued or "
            "running for this project, or a backend that does not take it): it runs as the backend is configured "
            "(DCSAM_RAY_ADDRESS)",
            file=sys.stderr,
        )
    if args.no_wait:
        print(job["id"])
        return 0
    from tqdm import tqdm

    bar = tqdm(total=job.get("progress_total") or 0, unit="task", desc=f"project {args.project}", dynamic_ncols=True)
    try:
        while True:
            try:
                r = session.get(f"{base}/jobs/{job['id']}", timeout=30)
                r.raise_for_status()
                job = r.json()
            except (requests.RequestException, ValueError) as exc:
                bar.write(f"backend unreachable ({exc}); retrying")
                time.sleep(max(args.poll, 2.0))
                continue
            total = job.get("progress_total") or 0
            if total and bar.total != total:
                bar.total = total
            bar.n = job.get("progress_done") or 0
            figures = job.get("figures") or {}
            if figures:
                bar.set_postfix(
                    imported=figures.get("imported"),
                    failed=figures.get("failed"),
                    rate=f"{figures.get('tasks_per_second', 0):.2f}/s",
                )
            bar.refresh()
            if job["status"] in FINAL:
                break
            time.sleep(args.poll)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\nstopped watching; job {job['id']} goes on in the backend (cancel: POST {base}/jobs/{job['id']}/cancel)",
            file=sys.stderr,
        )
        return 130
    bar.close()
    print(f"job {job['id']}: {job['status']}: {job.get('message', '')}", file=sys.stderr)
    return 0 if job["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
