"""Prometheus metrics for ``GET /metrics``, on ``prometheus_client``, right with several gunicorn workers.

:class:`Metrics` is the facade the app uses: ``describe`` a name (kind ``counter`` or ``gauge``) before its
first use, then ``inc`` / ``set`` it with keyword labels (the first call fixes the label names, later calls
must use the same ones), ``clear`` a local gauge, ``value`` to read a series back, ``render`` for the scrape.
A name used without ``describe`` is a counter when first ``inc``-ed, a local gauge when first ``set``.
Counter names end in ``_total`` (the exposition format wants it). ``set`` on a counter advances it to the
given process-local total (it never goes back).

Two modes, chosen by the environment (``prometheus_client`` reads it when first imported):

* One process (no ``PROMETHEUS_MULTIPROC_DIR``; ``create_app`` in tests): each ``Metrics`` has its own
  ``CollectorRegistry``, so several apps in one process never share a series.
* Several processes (``PROMETHEUS_MULTIPROC_DIR`` names a folder; ``dcsam serve`` sets it before gunicorn
  forks): each worker writes its values to files there and a scrape, whichever worker answers it, merges the
  files with ``MultiProcessCollector``. One ``Metrics`` per process in this mode (two would share the files).

  - Counters are summed over the workers, exited ones included, so a count never goes back.
    ``dcsam_model_loads_total`` is one of them: the loads of all workers (one per worker expected).
  - ``dcsam_model_loaded``: ``livesum``, the number of live workers that hold the model.
  - ``dcsam_preannotate_tasks_per_second``: ``mostrecent``, the latest figure, whichever worker ran the job.
  - Every other gauge is local: the app rebuilds it from the shared SQLite job table on each scrape
    (``dcsam_jobs``, ``dcsam_job_progress``), so every worker holds the same numbers; it is rendered from
    the answering process alone (summing would multiply it by the number of workers).

  A per-process value reaches the files when a worker sets it: one the app sets only while answering a
  scrape shows that worker's value as of its last scrape. ``value`` reads this process's own value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Gauges that hold one value per worker, and how a scrape merges them (see above); other gauges are local.
GAUGE_MODES = {"dcsam_model_loaded": "livesum", "dcsam_preannotate_tasks_per_second": "mostrecent"}

# The merged multiprocess output has no `_created` series; leave them out in one process too, so both agree.
disable_created_metrics()

LabelKey = tuple[tuple[str, str], ...]


class _LocalGauges:
    """Collector of the local gauges: rendered from this process's values only, in both modes."""

    def __init__(self, families: Callable[[], list[Metric]]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._labelnames: dict[str, tuple[str, ...]] = {}
        self._values: dict[str, dict[LabelKey, float]] = {}  # this process's value of every series
        self._objects: dict[str, Counter | Gauge] = {}  # counters and per-worker gauges
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_LocalGauges(self._local_families))
        path = os.environ.get(MULTIPROC_ENV)
        self._multiprocess = bool(path)
        if path:
            MultiProcessCollector(self._registry, path=path)

    def describe(self, name: str, kind: str, text: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"{name}: kind {kind!r} is not counter or gauge")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        with self._lock:
            self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            key = self._key(name, labels)
            child = self._child(name, key, "counter")
            if child is not None:
                child.inc(amount)
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            key = self._key(name, labels)
            child = self._child(name, key, "gauge")
            series = self._values.setdefault(name, {})
            if isinstance(child, Counter):
                child.inc(value - series.get(key, 0.0))  # a counter only moves forward: raises if value is lower
            elif child is not None:
                child.set(value)
            series[key] = float(value)

    def clear(self, name: str) -> None:
        """Drop every series of a local gauge (one rebuilt from a table on each scrape)."""
        with self._lock:
            if self._kind(name, "gauge") == "counter" or name in GAUGE_MODES:
                raise ValueError(f"{name}: only a local gauge can be cleared")
            self._values[name] = {}

    def value(self, name: str, **labels: str) -> float:
        """This process's value of one series (0 if it was never set)."""
        with self._lock:
            return self._values.get(name, {}).get(_label_key(labels), 0.0)

    def render(self) -> str:
        return generate_latest(self._registry).decode()

    # -- internals ----------------------------------------------------------------------------------
    def _kind(self, name: str, default: str) -> str:
        """The described kind of ``name``; else ``default``, kept from now on."""
        return self._help.setdefault(name, (default, ""))[0]

    def _key(self, name: str, labels: dict[str, str]) -> LabelKey:
        key = _label_key(labels)
        names = tuple(k for k, _ in key)
        if self._labelnames.setdefault(name, names) != names:
            raise ValueError(f"{name}: labels {names} differ from the first use's {self._labelnames[name]}")
        return key

    def _child(self, name: str, key: LabelKey, default_kind: str) -> Counter | Gauge | None:
        """The prometheus_client series behind ``name`` and ``key``; None for a local gauge."""
        obj = self._objects.get(name)
        if obj is None:
            kind = self._kind(name, default_kind)
            if kind == "gauge" and name not in GAUGE_MODES:
                return None
            text = self._help[name][1]
            labelnames = [k for k, _ in key]
            # multiprocess values live in the files, which the MultiProcessCollector reads: registering the
            # objects as well would count them twice
            registry = None if self._multiprocess else self._registry
            if kind == "counter":
                obj = Counter(name, text, labelnames, registry=registry)
            else:
                obj = Gauge(name, text, labelnames, registry=registry, multiprocess_mode=GAUGE_MODES[name])
            self._objects[name] = obj
        return obj.labels(*(v for _, v in key)) if key else obj

    def _local_families(self) -> list[Metric]:
        families = []
        with self._lock:
            for name, series in self._values.items():
                if name in self._objects:
                    continue
                family = GaugeMetricFamily(name, self._help[name][1], labels=list(self._labelnames.get(name, ())))
                for key, value in sorted(series.items()):
                    family.add_metric([v for _, v in key], value)
                families.append(family)
        return families


def _label_key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))
