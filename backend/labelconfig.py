"""The parts of a Label Studio label config this backend needs: images, mask controls, prompt tools."""

from __future__ import annotations

from dataclasses import dataclass, field

try:  # label-studio-sdk depends on defusedxml; configs arrive over the network
    from defusedxml.ElementTree import ParseError, fromstring
except ImportError:  # pragma: no cover
    from xml.etree.ElementTree import ParseError, fromstring

MASK_CONTROL_TYPES = ("brushlabels", "bitmasklabels", "polygonlabels")
PROMPT_CONTROL_TYPES = ("keypointlabels", "rectanglelabels", "keypoint", "rectangle")


class LabelConfigError(ValueError):
    """The label config cannot be served by this backend (answered with HTTP 400)."""


@dataclass(frozen=True)
class ImageTag:
    name: str
    value_key: str  # task.data key, without the leading "$"


@dataclass(frozen=True)
class ControlTag:
    name: str
    type: str  # lower-case tag name, also the region "type" (e.g. "brushlabels")
    to_name: str  # the Image it annotates
    labels: tuple[str, ...] = ()
    smart: bool = False


@dataclass
class LabelConfig:
    images: dict[str, ImageTag] = field(default_factory=dict)
    mask_controls: list[ControlTag] = field(default_factory=list)
    prompt_controls: list[ControlTag] = field(default_factory=list)

    def control(self, name: str) -> ControlTag | None:
        for c in self.mask_controls + self.prompt_controls:
            if c.name == name:
                return c
        return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def parse_label_config(xml: str | None) -> LabelConfig:
    """Parse ``xml``; raise :class:`LabelConfigError` unless it has an Image and a mask control on it."""
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
        if el.tag.lower() == "image" and el.get("name") and (el.get("value") or "").startswith("$"):
            cfg.images[el.get("name")] = ImageTag(el.get("name"), el.get("value")[1:])
    for el in elements:
        kind = el.tag.lower()
        if kind not in MASK_CONTROL_TYPES + PROMPT_CONTROL_TYPES or not el.get("name"):
            continue
        targets = [t.strip() for t in (el.get("toName") or "").split(",") if t.strip() in cfg.images]
        if not targets:
            continue
        labels = tuple(lab.get("value") for lab in el if lab.tag.lower() == "label" and lab.get("value"))
        tag = ControlTag(el.get("name"), kind, targets[0], labels, _truthy(el.get("smart")) or _truthy(el.get("smartOnly")))
        if kind in MASK_CONTROL_TYPES:
            if labels:
                cfg.mask_controls.append(tag)
        else:
            cfg.prompt_controls.append(tag)
    if not cfg.images:
        raise LabelConfigError("the label config has no <Image> tag with a $value: this backend segments images")
    if not cfg.mask_controls:
        raise LabelConfigError(
            "the label config has no mask control on an image: add <BrushLabels>, <BitmaskLabels> or "
            "<PolygonLabels> with at least one <Label> and toName pointing at the <Image>"
        )
    return cfg
