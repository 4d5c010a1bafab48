#!/usr/bin/env bash
# The CPU serving image, before and after "artifacts built once", built for real and measured:
# BEFORE (99c9489: the pod exports its backbones at start; torch and transformers in the image)
# and AFTER (HEAD by default: deploy/prepare-artifacts.sh builds the artifacts at image build;
# GRAFT_PREPARED=required, no torch). Each is `bentoml build` of `git archive <rev>` (the
# checkout is only read: no worktree, nothing changed in it) and `bentoml containerize`; then
# loadtests/bench_serving_image.py measures them (size, gzip of `docker save`, `docker run` to
# the first /readyz 200 alternating the images, torch/transformers importable, POST /v1/embed).
#
#   bash loadtests/bench_serving_image.sh all          # daemon base before after measure
#   bash loadtests/bench_serving_image.sh measure --out docs/BENCHMARKS.md
#   bash loadtests/bench_serving_image.sh stop         # the wheel server and the engine this started
#
# Steps: daemon | base | before | after | measure [bench_serving_image.py args] | stop | all.
# Everything it writes is under ${GRAFT_IMAGE_BENCH_DIR:-/tmp/graft-images}: the engine's data
# (when it starts one), BENTOML_HOME, the source copies, build logs. Needs root (dockerd,
# debootstrap) and the repository's .venv (bentoml, only run).
#
# Specific to a host WITHOUT Docker Hub or download.pytorch.org (as the one this was measured on);
# on a host with them, skip what does not apply:
#   - `daemon` starts Debian's docker.io engine by hand (no systemd, no iptables, no bridge,
#     overlay2 in the work dir) when no engine answers; builds and runs use the host network.
#   - `base`: BentoML's Dockerfiles say `FROM python:3.11-slim`. Unless an image of that name is
#     already there (pulled from Hub), this builds a STAND-IN under that name: debootstrap minbase
#     bookworm + Debian's python3.11, pip and venv (Python in /usr/bin; ~55 MiB larger than Hub's
#     image, so every image measured on it is too).
#   - The proxy CA: only if /usr/local/share/ca-certificates has files (a proxy that re-signs TLS),
#     they are copied into the stand-in base with SSL_CERT_FILE/PIP_CERT/REQUESTS_CA_BUNDLE, or
#     pip and uv fail with CERTIFICATE_VERIFY_FAILED. Not in the real python:3.11-slim.
#   - torch: the CPU wheel comes from ${GRAFT_WHEELS:-/opt/wheels}, served on 127.0.0.1. In the
#     build copies only, `--extra-index-url https://download.pytorch.org/whl/cpu` becomes
#     `--find-links http://127.0.0.1:$WHEEL_PORT/` and `torch==X` becomes `torch==X+cpu` (in
#     deploy/prepare-artifacts.sh and requirements/serve-cpu.txt), so a build that cannot get
#     the local wheel fails rather than fetch PyPI's CUDA torch. It is the wheel the CPU index serves.
#   - DOCKER_BUILDKIT=0 (the legacy builder; no buildx plugin here): BentoML's apt and uv cache
#     mounts do not apply, so /var/cache/apt and /var/lib/apt/lists stay in the images.
# Not host-specific: containerize runs from / because bentoml 1.4.40 refuses a dockerfile_template
# outside the cwd (bentoml/BentoML#5566; AFTER's bentofile has one).
set -euo pipefail

REPO=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
W=${GRAFT_IMAGE_BENCH_DIR:-/tmp/graft-images}
BEFORE_REV=${BEFORE_REV:-99c9489}
AFTER_REV=${AFTER_REV:-HEAD}
BEFORE_TAG=${BEFORE_TAG:-graft:before}
AFTER_TAG=${AFTER_TAG:-graft:after}
WHEELS=${GRAFT_WHEELS:-/opt/wheels}
WHEEL_PORT=${WHEEL_PORT:-8765}
BENTOML=${BENTOML:-$REPO/.venv/bin/bentoml}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CA_DIR=/usr/local/share/ca-certificates
export BENTOML_HOME=$W/bentoml BENTOML_DO_NOT_TRACK=true
mkdir -p "$W"

daemon() {  # an engine that answers, or Debian's docker.io started by hand
    docker info > /dev/null 2>&1 && return
    command -v dockerd > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io
    nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
        --data-root "$W/data" > "$W/dockerd.log" 2>&1 &
    echo $! > "$W/dockerd.pid"
    for _ in $(seq 30); do docker info > /dev/null 2>&1 && return; sleep 1; done
    echo "dockerd did not answer; see $W/dockerd.log" >&2; exit 1
}

base() {  # the python:3.11-slim stand-in (see the header), unless that image is there already
    docker image inspect python:3.11-slim > /dev/null 2>&1 && return
    command -v debootstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
    [ -d "$W/rootfs/usr" ] || debootstrap --variant=minbase bookworm "$W/rootfs" http://deb.debian.org/debian
    rm -rf "$W"/rootfs/var/cache/apt/archives/*.deb "$W"/rootfs/var/lib/apt/lists/*
    tar -C "$W/rootfs" -c . | docker import - local/debian-minbase:bookworm
    local ctx=$W/base-ctx
    rm -rf "$ctx" && mkdir -p "$ctx"
    cat > "$ctx/Dockerfile" <<'EOF'
FROM local/debian-minbase:bookworm
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3-pip python3-venv \
        ca-certificates \
    && ln -sf python3 /usr/bin/python && ln -sf pip3 /usr/bin/pip \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
EOF
    if compgen -G "$CA_DIR/*.crt" > /dev/null; then  # a TLS-re-signing proxy's CA (see the header)
        cp "$CA_DIR"/*.crt "$ctx/"
        cat >> "$ctx/Dockerfile" <<'EOF'
COPY *.crt /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
    fi
    echo 'CMD ["python3"]' >> "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build --network host -t python:3.11-slim "$ctx"
}

wheels_up() {  # $WHEELS over HTTP on loopback, for the builds' RUN steps (--network host)
    curl -fs "http://127.0.0.1:$WHEEL_PORT/" > /dev/null && return
    nohup python3 -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WHEELS" \
        > "$W/wheels-http.log" 2>&1 &
    echo $! > "$W/wheels-http.pid"
    for _ in $(seq 10); do curl -fs "http://127.0.0.1:$WHEEL_PORT/" > /dev/null && return; sleep 0.5; done
    echo "the wheel server did not answer; see $W/wheels-http.log" >&2; exit 1
}

cpu_torch_only() {  # $1 = source copy: torch from the local CPU wheel only (see the header)
    local f
    for f in "$1/deploy/prepare-artifacts.sh" "$1/requirements/serve-cpu.txt"; do
        grep -q 'download.pytorch.org/whl/cpu' "$f" 2> /dev/null || continue
        sed -i -e "s#--extra-index-url https://download.pytorch.org/whl/cpu#--find-links http://127.0.0.1:$WHEEL_PORT/#" \
               -e 's#\btorch==\([0-9.]*[0-9]\)\($\|[^+0-9.]\)#torch==\1+cpu\2#' "$f"
        if grep -n 'download.pytorch.org' "$f"; then echo "still the pytorch.org index: $f" >&2; exit 1; fi
        grep -n '\btorch==' "$f"
    done
    local pin pins
    pins=$(cat "$1/deploy/prepare-artifacts.sh" "$1/requirements/serve-cpu.txt" 2> /dev/null \
        | grep -o '\btorch==[0-9.]*+cpu' | sort -u || true)
    for pin in $pins; do
        compgen -G "$WHEELS/torch-${pin#torch==}-*.whl" > /dev/null \
            || { echo "no wheel for $pin in $WHEELS" >&2; exit 1; }
    done
}

bento_image() {  # $1 = image tag, $2 = git revision
    local tag=$1 rev=$2 version=${1#*:} src=$W/src/${1#*:}
    rm -rf "$src" && mkdir -p "$src"
    git -C "$REPO" archive "$rev" | tar -x -C "$src"
    git -C "$REPO" rev-parse "$rev" > "$src/.graft-bench-rev"
    cpu_torch_only "$src"
    wheels_up
    "$BENTOML" delete "graft:$version" -y > /dev/null 2>&1 || true  # a second build would say "exists"
    (cd "$src" && "$BENTOML" build -f bentofile.yaml --version "$version" 2>&1 | tail -3)
    (cd / && DOCKER_BUILDKIT=0 "$BENTOML" containerize "graft:$version" -t "$tag" --opt network=host) \
        > "$W/containerize-$version.log" 2>&1 || { tail -30 "$W/containerize-$version.log" >&2; exit 1; }
    grep -E 'Step [0-9]+/|Successfully' "$W/containerize-$version.log" || true
    docker image inspect "$tag" > /dev/null
}

measure() {  # extra arguments go to bench_serving_image.py (e.g. --out docs/BENCHMARKS.md)
    (cd "$REPO" && "$PYTHON" -m loadtests.bench_serving_image \
        --image "before=$BEFORE_TAG" --image "after=$AFTER_TAG" --json "$W/measure.json" "$@")
}

stop() {  # what this script started (the images stay in $W/data)
    local f
    for f in "$W/wheels-http.pid" "$W/dockerd.pid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2> /dev/null || true
        rm -f "$f"
    done
}

step=${1:-all}
shift || true
case "$step" in
    daemon) daemon ;;
    base) daemon; base ;;
    before) daemon; base; bento_image "$BEFORE_TAG" "$BEFORE_REV" ;;
    after) daemon; base; bento_image "$AFTER_TAG" "$AFTER_REV" ;;
    measure) daemon; measure "$@" ;;
    stop) stop ;;
    all) daemon; base; bento_image "$BEFORE_TAG" "$BEFORE_REV"; bento_image "$AFTER_TAG" "$AFTER_REV"
         measure "$@" ;;
    *) echo "usage: $0 [daemon|base|before|after|measure [args]|stop|all [args]]" >&2; exit 2 ;;
esac
