"""``dcsam serve``: the backend under gunicorn.

* ``PORT`` (9090), ``WORKERS`` (1), ``THREADS`` (8); flags override them.
* ``DCSAM_ENGINE=auto`` is resolved once here, before the workers start (a SAM checkpoint download,
  when allowed, happens now, not inside a request); the workers get the decision through the environment.
* The model is loaded once per worker process, after the fork, by a warm-up thread (``DCSAM_WARMUP``,
  on by default here) or by the first request that needs it; /health and /setup never load it.
* ``--preload`` (import the app in the master) is used only with ``DCSAM_DEVICE=cpu``: forking after
  CUDA was touched breaks CUDA in the workers.
* ``/metrics`` sums the workers' counters (backend/metrics.py): the master empties a folder for their values
  (``PROMETHEUS_MULTIPROC_DIR``, default ``MODEL_DIR/prometheus-multiproc``) and exports it before it imports
  ``prometheus_client`` and forks; a worker that exits is marked dead there, so its per-worker gauges go.
* Workers are :class:`backend.http_worker.BufferingWorker` (``DCSAM_WORKER_CLASS=dcsam``): the main thread
  reads each request whole before a request thread gets it, so slow clients hold no thread, and /health has
  threads of its own. ``DCSAM_REQUEST_TIMEOUT_S`` bounds how long a request may take to arrive (then 408) and
  each response write; ``DCSAM_WORKER_TIMEOUT_S`` is gunicorn's ``timeout``: a worker whose main loop stops
  for that long is restarted (model calls run in other threads and never stop it).
  ``DCSAM_WORKER_CLASS=gthread`` is gunicorn's threaded worker, as before (same timeouts, keep-alive 2 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .settings import ENV_DOC, BackendSettings

log = logging.getLogger("backend.serve")

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's switch to multiprocess mode

# Read by `dcsam serve` only, so not in ENV_DOC (WORKERS, THREADS and PORT are there).
SERVE_ENV_DOC = {
    "HOST / LOG_LEVEL": "bind address (0.0.0.0), log level (INFO)",
    MULTIPROC_ENV: "folder where the workers keep their /metrics values, emptied at start "
    "(default MODEL_DIR/prometheus-multiproc)",
    "DCSAM_WORKER_CLASS": "dcsam: requests read whole before a thread takes them, /health on its own threads; "
    "gthread: gunicorn's threaded worker (dcsam)",
    "DCSAM_REQUEST_TIMEOUT_S": "a request must arrive whole within this many seconds of its connection, "
    "else 408; also bounds each response write (30)",
    "DCSAM_WORKER_TIMEOUT_S": "restart a worker whose main loop is stuck this long; 0: never (120)",
    "DCSAM_HEALTH_THREADS": "threads per worker kept for GET /health and / (2)",
}


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {k:<34} {v}" for k, v in {**ENV_DOC, **SERVE_ENV_DOC}.items())
    parser = argparse.ArgumentParser(
        prog="dcsam serve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the Label Studio ML backend (gunicorn + Flask).",
        epilog="Configured by environment variables:\n" + env_help,
    )
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "0.0.0.0"), help="bind address (default $HOST or 0.0.0.0)"
    )
    parser.add_argument("-p", "--port", type=int, default=None, help="port (default $PORT or 9090)")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default $WORKERS or 1)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default $THREADS or 8)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        help="DEBUG also logs every request (default $LOG_LEVEL or INFO)",
    )
    parser.add_argument("--check", action="store_true", help="resolve the settings and the engine, print them, exit")
    return parser


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"dcsam serve: {name}={raw!r} is not an integer") from None


def worker_options(threads: int) -> dict[str, Any]:
    """gunicorn's worker class and timeouts, from DCSAM_WORKER_CLASS and the timeouts in SERVE_ENV_DOC."""
    from .http_worker import Limits

    kind = os.environ.get("DCSAM_WORKER_CLASS") or "dcsam"
    worker_timeout = _int_env("DCSAM_WORKER_TIMEOUT_S", 120)
    if kind not in ("dcsam", "gthread"):
        raise SystemExit(f"dcsam serve: DCSAM_WORKER_CLASS={kind!r} is not dcsam or gthread")
    if worker_timeout < 0:
        raise SystemExit("dcsam serve: DCSAM_WORKER_TIMEOUT_S must be >= 0")
    try:
        Limits.from_env()  # checked here, read again by each worker
    except ValueError as exc:
        raise SystemExit(f"dcsam serve: {exc}") from None
    options: dict[str, Any] = {"timeout": worker_timeout, "threads": threads}
    if kind == "gthread":
        options["worker_class"] = "gthread"
        options["keepalive"] = 2
    else:
        options["worker_class"] = "backend.http_worker.BufferingWorker"
    return options


def prepare_metrics_dir(model_dir: Path) -> Path:
    """Empty the multiprocess metrics folder and export it to the workers (before prometheus_client is imported)."""
    if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV):
        # it chose one-process mode when imported: each worker would count for itself
        raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_ENV} was set")
    path = Path(os.environ.get(MULTIPROC_ENV) or model_dir / "prometheus-multiproc")
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # values of an earlier run
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve with arguments parsed by :func:`build_parser`'s options (``dcsam serve`` shares them)."""
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    # force: `dcsam` configured the root logger already (no timestamps); a server's every line needs one,
    # in the master and in the workers it forks (gunicorn's own lines carry theirs)
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    logging.getLogger().setLevel(level)
    port = args.port if args.port is not None else _int_env("PORT", 9090)
    workers = args.workers if args.workers is not None else _int_env("WORKERS", 1)
    threads = args.threads if args.threads is not None else _int_env("THREADS", 8)
    if workers < 1 or threads < 1 or not (0 < port < 65536):
        print("dcsam serve: WORKERS and THREADS must be >= 1 and PORT in 1..65535", file=sys.stderr)
        return 2
    os.environ.setdefault("DCSAM_WARMUP", "1")
    try:
        serving = worker_options(threads)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        settings = BackendSettings.from_env()
        from .engine_select import choose_engine, model_version

        choice = choose_engine(settings, try_download=True)
    except ValueError as exc:
        print(f"dcsam serve: error: {exc}", file=sys.stderr)
        return 2
    if not args.check:
        try:
            metrics_dir = prepare_metrics_dir(settings.model_dir)
        except (OSError, RuntimeError) as exc:
            print(f"dcsam serve: error: metrics folder: {exc}", file=sys.stderr)
            return 2
        log.info("worker metrics in %s", metrics_dir)
    from .service import CHOICE_ENV

    os.environ[CHOICE_ENV] = json.dumps(
        {"engine": choice.engine, "sam_checkpoint": choice.sam_checkpoint, "reason": choice.reason}
    )
    version = model_version(settings, choice)
    preload = settings.device == "cpu"
    log.info(
        "serving on %s:%d, %d worker(s) x %d thread(s), engine %s (%s), model_version %s%s",
        args.host,
        port,
        workers,
        threads,
        choice.engine,
        choice.reason,
        version,
        ", --preload" if preload else "",
    )
    if args.check:
        print(
            json.dumps(
                {
                    "engine": choice.engine,
                    "reason": choice.reason,
                    "model_version": version,
                    "port": port,
                    "workers": workers,
                    "threads": threads,
                    "preload": preload,
                },
                indent=2,
            )
        )
        return 0

    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    def post_worker_init(worker) -> None:
        service = worker.wsgi.extensions.get("dcsam_service") if hasattr(worker.wsgi, "extensions") else None
        if service is None:
            return
        if service.settings.warmup:
            service.runtime.start_warmup()
        service.runner.start()  # resumes jobs a killed process left behind, without waiting for a request

    def child_exit(server, worker) -> None:
        multiprocess.mark_process_dead(worker.pid)  # drops its live* gauges; its counts stay in the sums

    class _App(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{args.host}:{port}",
                "workers": workers,
                **serving,  # worker class, threads, timeouts: see worker_options
                "graceful_timeout": 30,
                "preload_app": preload,
                "post_worker_init": post_worker_init,
                "child_exit": child_exit,
                "accesslog": "-" if level <= logging.DEBUG else None,
                "errorlog": "-",
                "loglevel": str(args.log_level).lower(),
                "proc_name": "dcsam-backend",
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one shared socket path by default
                options["control_socket_disable"] = True
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self):
            from .labelstudio.app import create_app

            return create_app(BackendSettings.from_env())

    try:
        _App().run()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
