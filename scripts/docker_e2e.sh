#!/usr/bin/env bash
# End-to-end check of the self-hosted stack, as users run it: the Docker images are built, the compose stack
# comes up with the CPU override, and the labelling loop is driven through Label Studio's API.
#
#   scripts/docker_e2e.sh      exit 0 when it passed (or was skipped, outside CI), non-zero when it failed
#
# Stages (each one's wall time is printed, and a summary at the end):
#   engine     use the running Docker engine, or install Debian's docker.io + iptables (apt) and start a dockerd
#              of its own (stopped again at the end; nothing else is touched)
#   base       a Debian bookworm minbase image (debootstrap + docker import; the rootfs tarball is cached),
#              the base of both images: Docker Hub is not needed
#   checkpoint a random-weight SAM 2.1 tiny checkpoint in the official format, handed to the build as a local
#              file (docker/checkpoints/) with its SHA-256, as a site without download access would
#   backend    docker/Dockerfile (the GPU image users get; torch from PyPI), with the host's extra CA
#              certificates handed in as the BuildKit secret proxy_ca when there are any
#   labelstudio docker/label-studio.Dockerfile: Label Studio 1.23.2 from PyPI on the same base
#   up         docker compose up with docker-compose.cpu.yml; waits for both healthchecks
#   flow       Label Studio API: BrushLabels project, image import, one annotation from a ground-truth mask,
#              the model connected by its service URL, Retrieve Predictions (one per task, IoU against the
#              ground truth), Start Training -> a new model version
#   restart    docker compose restart dcsam-backend: the versions survive in the volume
#   down       docker compose down -v
#
# No engine can be started: fails when CI=true, else prints SKIPPED and exits 0. Less free disk than the
# stage needs (DCSAM_E2E_NEED_GB cold, DCSAM_E2E_NEED_WARM_GB once built): a loud SKIPPED line, exit 0.
#
# Settings (environment):
#   DCSAM_E2E_HOME        cache and engine state: base tarball, checkpoint, dockerd data-root (when it starts
#                         one), marker of a finished build (default ~/.cache/dcsam-e2e)
#   DCSAM_TEST_DATA       the fixtures (perseg-mini/); default ../shared/data (scripts/fetch_test_data.py)
#   DCSAM_E2E_KEEP=1      leave the stack up at the end (for debugging)
#   DCSAM_E2E_NO_BUILD=1  use the images already there (dcsam-backend:e2e, dcsam-e2e/label-studio:1.23.2)
#   PYTHON                the project's Python with its test dependencies (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
E2E_HOME="${DCSAM_E2E_HOME:-$HOME/.cache/dcsam-e2e}"
CACHE="$E2E_HOME/cache"
NEED_GB="${DCSAM_E2E_NEED_GB:-20}"  # measured from cold: 16.4 GB
NEED_WARM_GB="${DCSAM_E2E_NEED_WARM_GB:-4}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_IMAGE="dcsam-e2e/debian:bookworm-minbase"
BACKEND_TAG="e2e"  # dcsam-backend:e2e (docker-compose.yml's image with DCSAM_IMAGE_TAG)
LS_IMAGE="dcsam-e2e/label-studio:1.23.2"
SAM_MODEL="sam2.1_hiera_t"
SAM_FILE="sam2.1_hiera_tiny.pt"
PROJECT="dcsam-e2e"
T0=$SECONDS
SUMMARY=()

log() { echo "[docker-e2e] $*"; }
die() { echo "[docker-e2e] FAILED: $*" >&2; exit 1; }
skip() {  # skip MESSAGE [disk]: no engine fails in CI (CI=true); too little disk skips everywhere
    if [ "${CI:-}" = "true" ] && [ "${2:-}" != "disk" ]; then
        echo "[docker-e2e] FAILED (CI=true, so no skipping): $1" >&2
        exit 1
    fi
    echo "[docker-e2e] SKIPPED: $1" >&2
    exit 0
}
stage() {  # stage NAME command...: run it, print and remember its wall time
    local name="$1" start=$SECONDS
    shift
    log "== $name"
    "$@"
    local took=$((SECONDS - start))
    SUMMARY+=("$(printf '%-12s %5d s' "$name" "$took")")
    log "== $name: ${took} s"
}

mkdir -p "$CACHE"
# one run at a time per DCSAM_E2E_HOME (CI runs of several checkouts on one machine share its cache and engine)
exec 9> "$E2E_HOME/e2e.lock"
if ! flock -n 9; then
    log "another run holds $E2E_HOME/e2e.lock: waiting for it (at most 30 minutes)"
    flock -w 1800 9 || die "$E2E_HOME/e2e.lock still held after 30 minutes"
fi
DATA="${DCSAM_TEST_DATA:-$ROOT/../shared/data}"
[ -f "$DATA/perseg-mini/cat_00.png" ] || die "no fixtures in $DATA (set DCSAM_TEST_DATA; scripts/fetch_test_data.py)"
[ -x "$PYTHON" ] || die "no Python at $PYTHON (set PYTHON)"

# ---- engine --------------------------------------------------------------------------------------------
STARTED_PID=""
WORK=""
STAGED=""  # the checkpoint copied into the build context, removed at the end
cleanup() {
    local rc=$?
    if [ -n "$WORK" ] && [ "${DCSAM_E2E_KEEP:-0}" != "1" ] && [ -f "$WORK/env" ]; then
        compose down -v --remove-orphans > /dev/null 2>&1 || true
    fi
    [ -n "$STAGED" ] && rm -f "$STAGED"
    if [ -n "$STARTED_PID" ]; then
        log "stopping the dockerd this script started (pid $STARTED_PID)"
        kill "$STARTED_PID" 2> /dev/null || true
        for _ in $(seq 60); do kill -0 "$STARTED_PID" 2> /dev/null || break; sleep 1; done
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# the docker CLI that can run BuildKit builds: buildx, or Debian's 20.10 CLI with DOCKER_BUILDKIT=1
pick_build_cli() {
    if docker buildx version > /dev/null 2>&1; then
        BUILD_CLI=(docker buildx build --load)
    elif [ -x /usr/bin/docker ] && DOCKER_BUILDKIT=1 /usr/bin/docker build --help 2>/dev/null | grep -q -- '--secret'; then
        BUILD_CLI=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
    else
        BUILD_CLI=(env DOCKER_BUILDKIT=1 docker build)
    fi
}

start_engine() {
    if docker info > /dev/null 2>&1; then
        log "using the running Docker engine ($(docker info --format '{{.ServerVersion}}' 2> /dev/null))"
        return
    fi
    if ! command -v dockerd > /dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
            log "installing Debian's docker.io and iptables"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io iptables > "$CACHE/apt.log" 2>&1 \
                || { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
                    apt-get install -y -q docker.io iptables > "$CACHE/apt.log" 2>&1; } \
                || skip "no Docker engine: installing docker.io failed (see $CACHE/apt.log)"
        else
            skip "no Docker engine running and none can be installed here (not root, or no apt)"
        fi
    fi
    log "starting dockerd (data-root $E2E_HOME/docker)"
    mkdir -p "$E2E_HOME/docker"
    dockerd --data-root "$E2E_HOME/docker" --pidfile "$E2E_HOME/dockerd.pid" > "$E2E_HOME/dockerd.log" 2>&1 &
    STARTED_PID=$!
    for _ in $(seq 60); do
        docker info > /dev/null 2>&1 && return
        kill -0 "$STARTED_PID" 2> /dev/null || break
        sleep 1
    done
    tail -n 20 "$E2E_HOME/dockerd.log" >&2 || true
    STARTED_PID=""
    skip "no Docker engine: dockerd did not start (log above, $E2E_HOME/dockerd.log)"
}

check_disk() {
    local need="$NEED_GB" free_kb free_gb
    if docker image inspect "dcsam-backend:$BACKEND_TAG" "$LS_IMAGE" > /dev/null 2>&1; then
        need="$NEED_WARM_GB"
    fi
    free_kb=$(df -Pk "$(docker info --format '{{.DockerRootDir}}' 2> /dev/null || echo "$E2E_HOME")" 2> /dev/null \
        | awk 'NR==2 {print $4}')
    free_gb=$((free_kb / 1024 / 1024))
    if [ "$free_gb" -lt "$need" ]; then
        echo "********************************************************************************" >&2
        skip "docker end-to-end stage needs ${need} GB free for Docker, only ${free_gb} GB free (short by $((need - free_gb)) GB)" disk
    fi
    log "free disk ${free_gb} GB (needs ${need} GB)"
}

# ---- images ----------------------------------------------------------------------------------------
make_base() {
    if docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
        log "$BASE_IMAGE is there"
        return
    fi
    local tarball="$CACHE/debian-bookworm-minbase.tar.gz"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap > /dev/null 2>&1 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap > "$CACHE/apt.log" 2>&1 \
            || die "debootstrap is missing and could not be installed"
        local rootfs="$CACHE/rootfs"
        rm -rf "$rootfs"
        nice debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian > "$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    docker import "$tarball" "$BASE_IMAGE" > /dev/null
    log "$BASE_IMAGE imported from $tarball"
}

make_checkpoint() {
    # official format, random weights, made once and cached (the same bytes keep the build cache valid)
    if [ ! -s "$CACHE/$SAM_FILE" ]; then
        "$PYTHON" - "$SAM_MODEL" "$CACHE/$SAM_FILE.part" <<'EOF'
import sys

import torch

from dcsam.sam_models import SAM_MODELS, build_sam_model, official_state_dict

name, out = sys.argv[1:3]
torch.manual_seed(0)
model = build_sam_model(name, random_weights=True)
torch.save(official_state_dict(model, SAM_MODELS[name].family), out)
EOF
        mv "$CACHE/$SAM_FILE.part" "$CACHE/$SAM_FILE"
    fi
    SAM_SHA256="$(sha256sum "$CACHE/$SAM_FILE" | cut -d' ' -f1)"
    log "$SAM_FILE sha256 $SAM_SHA256"
}

# the host's extra CA certificates (e.g. a TLS-inspecting proxy's), handed to the builds as a secret
proxy_ca_args() {
    PROXY_CA_ARGS=()
    local pem="$CACHE/proxy-ca.pem" dir="${DCSAM_E2E_CA_DIR:-/usr/local/share/ca-certificates}"
    if compgen -G "$dir/*.crt" > /dev/null; then
        cat "$dir"/*.crt > "$pem"
        PROXY_CA_ARGS=(--secret "id=proxy_ca,src=$pem")
        log "handing $(grep -c 'BEGIN CERTIFICATE' "$pem") CA certificate(s) from $dir to the builds (secret proxy_ca)"
    fi
}

build_backend() {
    # the local checkpoint goes into the build context's docker/checkpoints/ (git-ignored) for the build only
    local staged="$ROOT/docker/checkpoints/$SAM_FILE"
    if [ -e "$staged" ] && ! cmp -s "$staged" "$CACHE/$SAM_FILE"; then
        die "$staged exists and is not this script's checkpoint: move it away"
    fi
    cp -p "$CACHE/$SAM_FILE" "$staged"  # same bytes and times: the build cache stays valid
    STAGED="$staged"
    local rc=0
    nice "${BUILD_CLI[@]}" --progress=plain -f docker/Dockerfile -t "dcsam-backend:$BACKEND_TAG" \
        --build-arg "CUDA_IMAGE=$BASE_IMAGE" --build-arg "SAM_MODEL=$SAM_MODEL" \
        --build-arg "SAM_SHA256=$SAM_SHA256" "${PROXY_CA_ARGS[@]}" . > "$E2E_HOME/build-backend.log" 2>&1 || rc=$?
    rm -f "$staged"
    STAGED=""
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$E2E_HOME/build-backend.log" >&2
        die "backend image build failed (log: $E2E_HOME/build-backend.log)"
    fi
    grep -E "sha256 [0-9a-f]{64}|local file handed|loads into" "$E2E_HOME/build-backend.log" | sed 's/^/    /' || true
    if [ -n "$STARTED_PID" ]; then
        docker image prune -f > /dev/null  # our own engine only: the layers of the image this build replaced
    fi
    log "dcsam-backend:$BACKEND_TAG $(docker image inspect -f '{{.Size}}' "dcsam-backend:$BACKEND_TAG" | awk '{printf "%.2f GB", $1/1e9}')"
}

build_label_studio() {
    local ctx="$WORK/ls-context"
    mkdir -p "$ctx"
    cp docker/label-studio.Dockerfile docker/with-proxy-ca.sh "$ctx/"
    nice "${BUILD_CLI[@]}" --progress=plain -f "$ctx/label-studio.Dockerfile" -t "$LS_IMAGE" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${PROXY_CA_ARGS[@]}" "$ctx" > "$E2E_HOME/build-label-studio.log" 2>&1 \
        || { tail -n 40 "$E2E_HOME/build-label-studio.log" >&2; die "Label Studio image build failed"; }
    log "$LS_IMAGE $(docker image inspect -f '{{.Size}}' "$LS_IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
}

# ---- the stack --------------------------------------------------------------------------------------
COMPOSE=""
find_compose() {
    if docker compose version > /dev/null 2>&1; then
        COMPOSE="docker compose"
        return
    fi
    local pin tools="${DOCKER_TOOLS_VENV:-$ROOT/build/docker-tools}"
    pin="$(sed -n 's/^COMPOSE_PY="\([^"]*\)".*/\1/p' scripts/check_docker.sh)"
    if [ ! -x "$tools/bin/docker-compose" ]; then
        if ! { python3 -m venv "$tools" && "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "$pin"; }; then
            die "cannot install $pin"
        fi
    fi
    COMPOSE="$tools/bin/docker-compose"
}

compose() {
    # shellcheck disable=SC2086  # COMPOSE is "docker compose" or one path
    env -u COMPOSE_FILE -u COMPOSE_PROFILES -u COMPOSE_PROJECT_NAME $COMPOSE --project-directory "$ROOT" \
        --env-file "$WORK/env" -p "$PROJECT" -f docker-compose.yml -f docker-compose.cpu.yml \
        -f "$WORK/e2e.override.yml" "$@"
}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stack_up() {
    LS_PORT="$(free_port)"
    BACKEND_PORT="$(free_port)"
    cat > "$WORK/env" <<EOF
LABEL_STUDIO_PASSWORD=e2e-password-123
LABEL_STUDIO_USER_TOKEN=0123456789abcdef0123456789abcdef01234567
LABEL_STUDIO_IMAGE=$LS_IMAGE
LABEL_STUDIO_PORT=$LS_PORT
DCSAM_PORT=$BACKEND_PORT
DCSAM_IMAGE_TAG=$BACKEND_TAG
DCSAM_PROXY_CA=$ROOT/docker/no-proxy-ca.pem
EOF
    # a short fine-tune that is promoted whatever its score: the check is the plumbing, not the gain
    cat > "$WORK/e2e.override.yml" <<EOF
services:
  dcsam-backend:
    environment:
      DCSAM_TRAIN_MIN_GAIN: "-1"
      DCSAM_TRAIN_STEPS: "20"
      THREADS: "4"
EOF
    compose down -v --remove-orphans > /dev/null 2>&1 || true
    compose up -d --no-build --pull never --wait --wait-timeout 600 \
        || { compose ps -a >&2; compose logs --tail 60 >&2; die "the stack did not come up healthy"; }
    compose ps
}

wait_healthy() {  # wait_healthy SERVICE TIMEOUT
    local id status deadline=$((SECONDS + $2))
    id="$(compose ps -q "$1")"
    while [ $SECONDS -lt $deadline ]; do
        status="$(docker inspect -f '{{.State.Health.Status}}' "$id")"
        [ "$status" = healthy ] && return 0
        sleep 2
    done
    compose logs --tail 60 "$1" >&2
    die "$1 not healthy after $2 s (status $status)"
}

flow() {
    "$PYTHON" - "$ROOT" "$DATA" "http://127.0.0.1:$LS_PORT" "http://127.0.0.1:$BACKEND_PORT" "$WORK/state.json" \
        <<'EOF'
"""The labelling loop through Label Studio's API against the compose stack."""

import json
import sys
import time
from pathlib import Path

import requests

root, data, ls_url, backend_url, state_file = sys.argv[1:6]
sys.path.insert(0, root)
from dcsam.io import read_mask  # noqa: E402
from dcsam.masks import iou  # noqa: E402
from tests.support.regions import brush_result, decode_brush  # noqa: E402

TOKEN = {"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>"""
perseg = Path(data) / "perseg-mini"
names = ["cat_00", "cat_01", "cat_02"]


def call(method, path, expect=(200, 201), **kw):
    r = requests.request(method, ls_url + path, headers=TOKEN, timeout=300, **kw)
    assert r.status_code in expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r


def backend(path):
    r = requests.get(backend_url + path, timeout=30)
    r.raise_for_status()
    return r.json()


def step(what):
    print(f"[flow] {what}", flush=True)


project = call("POST", "/api/projects", json={"title": "dcsam e2e", "label_config": CONFIG}).json()["id"]
files = {f"file{i}": (f"{n}.jpg", open(perseg / f"{n}.jpg", "rb"), "image/jpeg") for i, n in enumerate(names)}
assert call("POST", f"/api/projects/{project}/import", files=files).json()["task_count"] == len(names)
tasks = {}
for t in call("GET", "/api/tasks", params={"project": project, "page_size": 100}).json()["tasks"]:
    tasks[t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1].rsplit(".", 1)[0]] = t["id"]
assert sorted(tasks) == names, tasks
step(f"project {project}: {len(tasks)} tasks imported")


def annotate(name):
    call("POST", f"/api/tasks/{tasks[name]}/annotations", json={"result": brush_result(read_mask(perseg / f"{name}.png"), "cat")})


annotate("cat_00")
ml = call("POST", "/api/ml", json={"url": "http://dcsam-backend:9090", "project": project, "title": "dcsam"}).json()
assert ml["state"] == "CO", ml
base = backend(f"/versions?project={project}")["model_version"]
step(f"model connected at http://dcsam-backend:9090 (state {ml['state']}), version {base}")

others = [n for n in names if n != "cat_00"]
call("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
     json={"selectedItems": {"all": False, "included": [tasks[n] for n in others]}})
for name in others:
    preds = call("GET", "/api/predictions", params={"task": tasks[name]}).json()
    assert len(preds) == 1, f"{name}: {len(preds)} predictions"
    assert preds[0]["model_version"] == base, preds[0]["model_version"]
    [region] = preds[0]["result"]
    score = iou(decode_brush(region), read_mask(perseg / f"{name}.png"))
    step(f"{name}: one prediction ({base}), IoU {score:.3f}")
    assert score >= 0.8, f"{name}: IoU {score:.3f} < 0.8"

for name in others:
    annotate(name)
call("POST", f"/api/ml/{ml['id']}/train")
step("Start Training sent")
deadline = time.monotonic() + 900
while True:
    jobs = backend(f"/jobs?project={project}&kind=train")["jobs"]
    if jobs and jobs[0]["status"] not in ("queued", "running"):
        break
    assert time.monotonic() < deadline, f"training not finished: {jobs}"
    time.sleep(2)
train = jobs[0]
assert train["status"] == "done" and train["figures"].get("promoted"), train
new = train["figures"]["new_version"]
versions = backend(f"/versions?project={project}")
assert versions["model_version"] == new and new != base and base in versions["versions"], versions
deadline = time.monotonic() + 120
while call("GET", f"/api/ml/{ml['id']}").json()["model_version"] != new:
    assert time.monotonic() < deadline, "Label Studio does not show the new version"
    time.sleep(2)
step(f"training done: new version {new} (Label Studio shows it); versions {versions['versions']}")
Path(state_file).write_text(json.dumps({"project": project, "ml": ml["id"], "base": base, "new": new}))
EOF
}

after_restart() {
    "$PYTHON" - "http://127.0.0.1:$BACKEND_PORT" "$WORK/state.json" <<'EOF'
import json
import sys

import requests

backend_url, state_file = sys.argv[1:3]
state = json.load(open(state_file))
versions = requests.get(f"{backend_url}/versions", params={"project": state["project"]}, timeout=30).json()
assert versions["model_version"] == state["new"], versions
assert state["base"] in versions["versions"] and state["new"] in versions["versions"], versions
print(f"[flow] after the restart: still serving {state['new']}; versions {versions['versions']}", flush=True)
EOF
}

restart_backend() {
    compose restart dcsam-backend
    wait_healthy dcsam-backend 300
    after_restart
}

stack_down() {
    compose down -v --remove-orphans
    if docker volume ls -q | grep -q "^${PROJECT}_"; then
        die "volumes left after down -v: $(docker volume ls -q | grep "^${PROJECT}_" | tr '\n' ' ')"
    fi
    rm -f "$WORK/env"
}

# ---- run ----------------------------------------------------------------------------------------------
WORK="$(mktemp -d)"
stage engine start_engine
check_disk
pick_build_cli
find_compose
proxy_ca_args
stage base make_base
stage checkpoint make_checkpoint
if [ "${DCSAM_E2E_NO_BUILD:-0}" = "1" ]; then
    docker image inspect "dcsam-backend:$BACKEND_TAG" "$LS_IMAGE" > /dev/null || die "DCSAM_E2E_NO_BUILD=1: no images"
    log "DCSAM_E2E_NO_BUILD=1: using the images already built"
else
    stage backend build_backend
    stage labelstudio build_label_studio
fi
stage up stack_up
stage flow flow
stage restart restart_backend
if [ "${DCSAM_E2E_KEEP:-0}" = "1" ]; then
    log "DCSAM_E2E_KEEP=1: the stack stays up (project $PROJECT)"
    rm -f "$WORK/env"
else
    stage down stack_down
fi
echo
log "stage timings:"
for line in "${SUMMARY[@]}"; do echo "    $line"; done
log "total $((SECONDS - T0)) s"
log "PASSED"
