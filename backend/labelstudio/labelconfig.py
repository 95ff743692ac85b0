"""The parts of a Label Studio label config this backend needs: images, mask controls, prompt tools,
and videos with their ``VideoRectangle`` tracks (labelled by a ``<Labels>`` tag on the same video)."""

from __future__ import annotations

from dataclasses import dataclass, field

try:  # label-studio-sdk depends on defusedxml; configs arrive over the network
    from defusedxml.ElementTree import ParseError, fromstring
except ImportError:  # pragma: no cover
    from xml.etree.ElementTree import ParseError, fromstring

MASK_CONTROL_TYPES = ("brushlabels", "bitmasklabels", "polygonlabels")
PROMPT_CONTROL_TYPES = ("keypointlabels", "rectanglelabels", "keypoint", "rectangle")
TRACK_CONTROL_TYPES = ("videorectangle",)
DEFAULT_FRAMERATE = 24.0  # Label Studio's <Video> default


class LabelConfigError(ValueError):
    """The label config cannot be served by this backend (answered with HTTP 400)."""


@dataclass(frozen=True)
class ImageTag:
    name: str
    value_key: str  # task.data key, without the leading "$"


@dataclass(frozen=True)
class VideoTag:
    name: str
    value_key: str  # task.data key, without the leading "$"
    framerate: str = str(DEFAULT_FRAMERATE)  # a number, or "$key" read from the task's data

    def fps(self, data: dict | None = None) -> float:
        """Frames per second as Label Studio's editor reads it (default 24; below 1 means 1/value)."""
        raw = self.framerate
        if raw.startswith("$"):
            raw = str((data or {}).get(raw[1:], ""))
        try:
            fps = float(raw)
        except ValueError:
            return DEFAULT_FRAMERATE
        if not fps > 0:
            return DEFAULT_FRAMERATE
        return 1.0 / fps if fps < 1 else fps


@dataclass(frozen=True)
class ControlTag:
    name: str
    type: str  # lower-case tag name, also the region "type" (e.g. "brushlabels")
    to_name: str  # the Image (or Video) it annotates
    labels: tuple[str, ...] = ()
    smart: bool = False


@dataclass
class LabelConfig:
    images: dict[str, ImageTag] = field(default_factory=dict)
    mask_controls: list[ControlTag] = field(default_factory=list)
    prompt_controls: list[ControlTag] = field(default_factory=list)
    videos: dict[str, VideoTag] = field(default_factory=dict)
    track_controls: list[ControlTag] = field(default_factory=list)  # VideoRectangle, labels from <Labels>

    @property
    def label_controls(self) -> list[ControlTag]:
        """The controls whose labels are segmented and learnt from: image masks and video tracks."""
        return self.mask_controls + self.track_controls

    def control(self, name: str) -> ControlTag | None:
        for c in self.label_controls + self.prompt_controls:
            if c.name == name:
                return c
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def parse_label_config(xml: str | None) -> LabelConfig:
    """Parse ``xml``; raise :class:`LabelConfigError` unless it has an Image with a mask control on it,
    or a Video with a VideoRectangle and labels."""
    if not xml or not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("no label config given")
    try:
        root = fromstring(xml)
    except ParseError as exc:
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from exc
    except Exception as exc:  # defusedxml refuses entities, DTDs, ...
        raise LabelConfigError(f"the label config was refused: {exc}") from exc
    cfg = LabelConfig()
    elements = list(root.iter())
    for el in elements:
        kind, name, value = el.tag.lower(), el.get("name"), el.get("value") or ""
        if kind == "image" and name and value.startswith("$"):
            cfg.images[name] = ImageTag(name, value[1:])
        elif kind == "video" and name and value.startswith("$"):
            cfg.videos[name] = VideoTag(name, value[1:], (el.get("framerate") or str(DEFAULT_FRAMERATE)).strip())
    video_labels: dict[str, list[str]] = {}  # <Labels toName="video">: the labels of its tracks
    for el in elements:
        if el.tag.lower() == "labels" and el.get("name"):
            for target in _targets(el, cfg.videos):
                video_labels.setdefault(target, []).extend(_labels(el))
    for el in elements:
        kind = el.tag.lower()
        if not el.get("name"):
            continue
        if kind in TRACK_CONTROL_TYPES:
            for target in _targets(el, cfg.videos)[:1]:
                labels = tuple(dict.fromkeys(video_labels.get(target, [])))
                if labels:
                    cfg.track_controls.append(ControlTag(el.get("name"), kind, target, labels))
            continue
        if kind not in MASK_CONTROL_TYPES + PROMPT_CONTROL_TYPES:
            continue
        targets = _targets(el, cfg.images)
        if not targets:
            continue
        labels = _labels(el)
        tag = ControlTag(
            el.get("name"), kind, targets[0], labels, _truthy(el.get("smart")) or _truthy(el.get("smartOnly"))
        )
        if kind in MASK_CONTROL_TYPES:
            if labels:
                cfg.mask_controls.append(tag)
        else:
            cfg.prompt_controls.append(tag)
    if cfg.track_controls and not cfg.mask_controls:
        return cfg
    if cfg.videos and not cfg.images:
        raise LabelConfigError(
            'the label config has a <Video> but no <VideoRectangle toName="..."> with a <Labels toName="..."> '
            "on it (at least one <Label>): this backend writes VideoRectangle tracks"
        )
    if not cfg.images:
        raise LabelConfigError(
            "the label config has no <Image> tag with a $value: this backend segments images "
            "(and videos: <Video> with <VideoRectangle> and <Labels>)"
        )
    if not cfg.mask_controls:
        raise LabelConfigError(
            "the label config has no mask control on an image: add <BrushLabels>, <BitmaskLabels> or "
            "<PolygonLabels> with at least one <Label> and toName pointing at the <Image>"
        )
    return cfg


def _targets(el, objects: dict) -> list[str]:
    return [t.strip() for t in (el.get("toName") or "").split(",") if t.strip() in objects]


def _labels(el) -> tuple[str, ...]:
    return tuple(lab.get("value") for lab in el if lab.tag.lower() == "label" and lab.get("value"))
