"""The ``dcsam`` command line.

Built-in commands live in one module per group (``image``, ``training``, ``video``, ``bench``), all
with the model flags of :mod:`dcsam.cli.model_args`. Other installed packages add commands through
the ``dcsam.commands`` entry-point group: each entry point names a function ``add_parsers(subparsers)``
that registers its subcommands with ``func(args) -> exit code`` as default. That is how the Label
Studio backend adds ``dcsam serve`` and ``dcsam preannotate`` without the model library importing it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys

from ..errors import DcsamError

log = logging.getLogger("dcsam")

COMMANDS_GROUP = "dcsam.commands"


def _add_plugin_commands(sub) -> None:
    for ep in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            add_parsers = ep.load()
        except Exception as exc:  # a broken plugin must not take the built-in commands down with it
            log.warning("commands of %s (%s) not loaded: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        add_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcsam", description="In-context segmentation: label one image, segment the rest."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    # Imported here: the library (dcsam.bench) uses model_args without loading every command.
    from . import bench, image, training, video

    for group in (image, training, bench, video):
        group.add_parsers(sub)
    _add_plugin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (DcsamError, ValueError) as exc:
        print(f"dcsam: error: {exc}", file=sys.stderr)
        return 2
