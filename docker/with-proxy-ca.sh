#!/bin/sh
# Build helper: run a command that downloads (pip, the weights) with the proxy CA added to the trusted roots,
# when the build was given one as the BuildKit secret "proxy_ca" (a PEM file with one or more certificates).
# The combined bundle lives in a temporary file removed afterwards: the CA is in no layer of the image.
set -eu
secret="${PROXY_CA_SECRET:-/run/secrets/proxy_ca}"  # the variable: for tests
if [ ! -s "$secret" ]; then
    exec "$@"
fi
bundle="$(mktemp)"
trap 'rm -f "$bundle"' EXIT
system=/etc/ssl/certs/ca-certificates.crt
if [ -f "$system" ]; then cat "$system" "$secret" > "$bundle"; else cat "$secret" > "$bundle"; fi
export SSL_CERT_FILE="$bundle" PIP_CERT="$bundle" REQUESTS_CA_BUNDLE="$bundle" CURL_CA_BUNDLE="$bundle"
"$@"
