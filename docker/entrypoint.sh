#!/bin/sh
# Container entry point.
#   (no arguments) or options      -> dcsam serve [options]   (the Label Studio ML backend)
#   a dcsam subcommand             -> dcsam <subcommand> ...  (e.g. bench, predict, model-info)
#   anything else                  -> run it as is            (e.g. sh, python)
set -eu

if [ -n "${MODEL_DIR:-}" ]; then
    mkdir -p "$MODEL_DIR" 2>/dev/null || true
    if [ ! -w "$MODEL_DIR" ]; then
        echo "entrypoint: MODEL_DIR=$MODEL_DIR is not writable by uid $(id -u); fix the volume's owner" >&2
        exit 1
    fi
fi

case "${1:-}" in
    "" | -*) exec dcsam serve "$@" ;;
    serve | bench | predict | eval | train | model-info | convert-reference) exec dcsam "$@" ;;
    *) exec "$@" ;;
esac
