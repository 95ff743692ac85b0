"""What the backend adds to the ``dcsam`` command line, through entry points (see pyproject.toml):

* ``dcsam serve`` and ``dcsam preannotate`` (group ``dcsam.commands``), with the options of
  :mod:`backend.serve` and :mod:`backend.cli_preannotate`;
* the ``labelstudio-brush`` output of ``dcsam bench`` (group ``dcsam.bench_outputs``): JPEG bytes in
  as the backend decodes them, Label Studio brush RLE regions out.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: every `dcsam` command loads this module to register its own
    from dcsam.bench import BenchOutput


def _add_command(
    sub, name: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], help: str
) -> None:
    # The backend's own parser as parent: its options, description and -h, one definition for both entry points.
    p = sub.add_parser(
        name,
        parents=[parser],
        add_help=False,
        help=help,
        description=parser.description,
        epilog=parser.epilog,
        formatter_class=parser.formatter_class,
    )
    p.set_defaults(func=run)


def add_parsers(sub) -> None:
    from . import cli_preannotate, serve

    _add_command(
        sub,
        "serve",
        serve.build_parser(),
        serve.run,
        help="run the Label Studio ML backend (gunicorn); configured by environment variables",
    )
    _add_command(
        sub,
        "preannotate",
        cli_preannotate.build_parser(),
        cli_preannotate.run,
        help="pre-annotate a whole Label Studio project in a running backend, with a progress bar",
    )


def brush_bench_output() -> BenchOutput:
    from dcsam.bench import BenchOutput

    from .labelstudio.labelconfig import ControlTag
    from .labelstudio.media import decode_image
    from .labelstudio.outputs import BrushOutput

    writer = BrushOutput(ControlTag("tag", "brushlabels", "image"))
    return BenchOutput(
        "labelstudio-brush",
        decode=lambda data: decode_image(data, 10**9, "query"),
        encode=writer.region,
        stage="rle",
        path="backend.labelstudio.media.decode_image -> InContextSegmenter.predict -> "
        "backend.labelstudio.outputs.BrushOutput (RLE)",
    )
