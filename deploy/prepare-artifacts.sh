#!/usr/bin/env bash
# The CPU serving image builds its artifacts once, here (bentofile.yaml's dockerfile_template,
# deploy/Dockerfile.serve.j2, runs it after the bento's source is copied in, as root).
# `python -m service.cli prepare` (export, parity gate against torch, every int8 recipe and the
# gates of the build machine's CPU) writes into $GRAFT_ARTIFACTS (/home/bentoml/artifacts), which
# serving then only reads (GRAFT_PREPARED=required). torch, transformers and EfficientNet's
# architecture are installed into a throwaway directory and removed in this same RUN, so no
# layer of the image holds them. A node of another CPU measures its own int8 gates at start
# from the prepared graphs (ONNX Runtime only; GRAFT_HOME).
set -euxo pipefail
# No installer cache: uv's (or pip's) would keep the ~0.9 GB of torch and transformers in this
# layer after the directory below is gone (measured: docs/BENCHMARKS.md, artifacts built once).
export UV_NO_CACHE=1 PIP_NO_CACHE_DIR=1
pip_install() {
    if command -v uv > /dev/null 2>&1; then uv pip install "$@"; else pip3 install "$@"; fi
}
# (The weights wheels are in already: deploy/weights.sh, the setup script.)
EXPORT=/tmp/graft-export
# The serving pins of what transformers shares with serving (numpy, tokenizers, safetensors), so
# the export sees the versions that serve.
pip_install --target "$EXPORT" --extra-index-url https://download.pytorch.org/whl/cpu \
    torch==2.13.0 transformers==5.24.0 efficientnet-lite-pytorch==0.1.0 \
    numpy==2.4.6 tokenizers==0.23.3 safetensors==0.8.0
cd "$BENTO_PATH/src"
PYTHONPATH="$EXPORT" GRAFT_HOME=/tmp/graft-prepare GRAFT_ARTIFACTS="$GRAFT_ARTIFACTS" GRAFT_PREPARED=build \
    python -m service.cli prepare
rm -rf "$EXPORT" /tmp/graft-prepare
# raw.onnx is the exporter's graph, which prepare turned into the fp32, fp16 and int8 graphs;
# serving (GRAFT_PREPARED=required) never reads it.
find "$GRAFT_ARTIFACTS" -name raw.onnx -delete
chmod -R a+rX,go-w "$GRAFT_ARTIFACTS"
