"""Per-project Label Studio connections and label configs, as ``/setup`` and the environment give them.

* The environment's ``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY`` serve every project; without them,
  each project uses the hostname and token its ``/setup`` passed (the two never mix).
* Label configs up to ``DCSAM_MAX_CONFIG_MB`` are parsed once per distinct XML (an LRU cache bounded by
  the XML's total size) and stored with the project.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from ..settings import BackendSettings
from ..store import ProjectStore
from .labelconfig import LabelConfig, LabelConfigError, parse_label_config
from .media import LabelStudioAccess, configure

MAX_SETUP_ACCESSES = 256  # Label Studio clients kept for /setup-given hosts and tokens; an evicted one is rebuilt
CONFIG_CACHE_BYTES = 8 * 1024 * 1024  # XML kept with its parse (a parse takes about 16x the XML's size)

log = logging.getLogger(__name__)


class _ConfigCache:
    """Parsed label configs by XML, the least recently used dropped beyond ``capacity`` bytes of XML."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._configs: OrderedDict[str, tuple[LabelConfig, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def parse(self, xml: str, max_bytes: int) -> LabelConfig:
        size = len(xml.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise LabelConfigError(f"{size} bytes is over the limit of {max_bytes} (DCSAM_MAX_CONFIG_MB)")
        with self._lock:
            if xml in self._configs:
                self._configs.move_to_end(xml)
                return self._configs[xml][0]
        cfg = parse_label_config(xml)
        with self._lock:
            if xml not in self._configs:
                self._configs[xml] = (cfg, size)
                self._bytes += size
            while self._bytes > self.capacity and len(self._configs) > 1:
                self._bytes -= self._configs.popitem(last=False)[1][1]
        return cfg


class LabelStudioProjects:
    def __init__(self, projects: ProjectStore, settings: BackendSettings):
        self.projects = projects
        self.settings = settings
        self._env_access: LabelStudioAccess | None = None
        if settings.label_studio_url and settings.label_studio_api_key:
            self._env_access = self._new_access(settings.label_studio_url, settings.label_studio_api_key)
        elif settings.label_studio_url or settings.label_studio_api_key:
            log.warning("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set; using what /setup passes instead")
        self._setup_accesses: OrderedDict[tuple[str, str], LabelStudioAccess] = OrderedDict()
        self._lock = threading.Lock()
        self._configs = _ConfigCache(CONFIG_CACHE_BYTES)
        configure(settings)  # this process's download policy and decode budget

    def _new_access(self, url: str, token: str) -> LabelStudioAccess:
        return LabelStudioAccess(
            url,
            token,
            max_download_bytes=self.settings.max_download_bytes,
            local_files_root=self.settings.local_files_root,
        )

    def access_for(self, project_id: int | None) -> LabelStudioAccess | None:
        """The environment's Label Studio URL + token; else what /setup passed for this project."""
        if self._env_access is not None:
            return self._env_access
        if project_id is None:
            return None
        project = self.projects.get(project_id)
        if not project or not project.get("hostname") or not project.get("access_token"):
            return None
        key = (project["hostname"], project["access_token"])
        with self._lock:
            if key not in self._setup_accesses:
                self._setup_accesses[key] = self._new_access(*key)
                while len(self._setup_accesses) > MAX_SETUP_ACCESSES:
                    self._setup_accesses.popitem(last=False)
            self._setup_accesses.move_to_end(key)
            return self._setup_accesses[key]

    def label_config(self, project_id: int | None, xml: str | None) -> LabelConfig:
        """Parse ``xml`` (or the project's stored config) and remember it for the project."""
        stored = self.projects.get(project_id) if project_id is not None else None
        if not xml:
            xml = stored and stored.get("label_config")
        if not xml:
            raise LabelConfigError("no label config: send label_config, or call /setup for this project first")
        if not isinstance(xml, str):  # the parse cache needs a hashable key; a config is XML text anyway
            raise LabelConfigError(f"a label config is XML text, not a {type(xml).__name__}")
        cfg = self._configs.parse(xml, self.settings.max_config_bytes)
        if project_id is not None and (not stored or stored.get("label_config") != xml):
            self.projects.save(project_id, label_config=xml)
        return cfg
