# mambaserve — every target creates the venv and installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKPOINT ?= checkpoints/default
REPO ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
export HTTP_PORT GRPC_PORT METRICS_PORT

.PHONY: help venv system-deps demo test test-slow lint data eval-data train train-quick evaluate repo serve web bench bench-kernels gpu-check gpu-check-clips gpu-check-dry-run soak clean

help:
	@echo "make demo   - set up, build the model repository, start tritonserver, transcribe the sample clips"
	@echo "make test   - set up and run the test suite (real tritonserver, real clients)"
	@echo "make train  - regenerate data and retrain the default checkpoint (~2 h on 2 CPU cores: corpus 43 min, training 65, the rest ~12; TRAIN_ARGS=--resume continues)"
	@echo "make train-quick - the quick recipe (6 000 items, 12 min of training) into checkpoints/quick"
	@echo "make serve  - run tritonserver in the foreground on $(REPO)"
	@echo "make web    - the page that listens (clients/web) on http://127.0.0.1:$(WEB_PORT)/, next to make serve"
	@echo "make bench / bench-kernels / soak / lint"
	@echo "make gpu-check-clips, gpu-check-dry-run (CPU) / gpu-check (on a CUDA host) - see kernels/BENCHMARKS.md"

# torch is installed first from its pin: an open range would pull gigabytes of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	# mamba-ssm as a CPU test reference only: no CUDA build, no deps (its imports come with [dev]).
	MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE $(PY) -m pip install -q --no-deps --no-build-isolation mamba-ssm==2.3.2.post1
	touch $@

venv: $(STAMP)

# Debian packages the data generator and the observability tests use. training/setup_voices.py adds
# Debian's contrib + non-free components when the MBROLA / Pico voices are missing (and says so),
# installs the training voices (espeak-ng, sox, MBROLA, Pico) and the evaluation-only ones (flite,
# festival), and fetches the English package descriptions (reserved evaluation text).
# The front (serving/front.py, make serve REPLICAS=N and its tests): Debian's nginx with njs.
NGINX_DEPS = if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_http_js_module.so ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light libnginx-mod-http-js >/dev/null; \
	fi
system-deps:
	@if ! command -v prometheus >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null; \
	fi
	@$(NGINX_DEPS)
	@# Headless Chromium and its WebDriver for the browser tests of clients/web (tests/clients/test_web.py).
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null; \
	fi
	@$(PYTHON) training/setup_voices.py --eval

demo: venv
	$(PY) -m mambaserve.demo --checkpoint $(CHECKPOINT) --repository $(REPO)

test: venv system-deps
	$(PY) -m pytest -m "not slow" -q

test-slow: venv system-deps
	$(PY) -m pytest -m slow -q || [ $$? -eq 5 ]  # 5: no test is marked slow right now

# ruff (lint + format) and import-linter (every import points down the layers: [tool.importlinter]).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

data: venv system-deps
	$(PY) -m mambaserve.training.corpus --out data/corpus

# Evaluation-only sets (CMU voices on Debian package descriptions; packaged human recordings).
eval-data: venv system-deps
	$(PY) -m mambaserve.training.evalsets --out data/eval

# e.g. make train TRAIN_ARGS="--resume --eval-limit 100 --baseline-limit 100" (limits: the first N items per set)
TRAIN_ARGS ?=
train: venv system-deps
	$(PY) -m mambaserve.training.make_default --out $(CHECKPOINT) $(TRAIN_ARGS)

# The quick variant: 6 000 training items, 12 minutes of training, ctc_lm evaluated on 50 items per set
# (sized for <= 30 minutes on 2 cores; writes checkpoints/quick, never the default).
train-quick: venv system-deps
	$(PY) -m mambaserve.training.make_default --out checkpoints/quick --corpus data/corpus-quick \
	  --run runs/quick --n-train 6000 --set max_minutes=12 --eval-limit 50 --eval-methods ctc_lm ctc_greedy \
	  --baseline-limit 20 $(TRAIN_ARGS)

# Every test set x {mambaserve, pocketsphinx, Whisper tiny.en} -> benchmarks/ACCURACY.md (+ accuracy.json);
# e.g. make evaluate EVALUATE_ARGS="--limit 50". One checkpoint on one set: python -m mambaserve.training.evaluate.
EVAL_CORPUS ?= data/corpus
EVAL_DIR ?= data/eval
EVALUATE_ARGS ?=
evaluate: venv
	$(PY) -m mambaserve.training.accuracy --checkpoint $(CHECKPOINT) --corpus $(EVAL_CORPUS) --eval-dir $(EVAL_DIR) $(EVALUATE_ARGS)

repo: venv
	$(PY) -m mambaserve.build --checkpoint $(CHECKPOINT) --out $(REPO)

# REPLICAS=N (N > 1): N tritonservers on private ports behind the nginx front on HTTP_PORT/GRPC_PORT
# (session affinity, limits; serving/front.py). Unset or 1: one tritonserver, as before.
REPLICAS ?= 1
serve: venv
	@if [ "$(REPLICAS)" -gt 1 ]; then \
	  $(NGINX_DEPS) && $(PY) -m mambaserve.serving.front --repository $(REPO) --replicas $(REPLICAS); \
	else \
	  $(PY) -m mambaserve.serving.server --repository $(REPO); \
	fi

# The page that listens (clients/web): microphone -> WebSocket -> gateway -> asr_streaming over gRPC,
# file upload -> asr. Next to a running `make serve` (its gRPC port: GRPC_PORT).
WEB_HOST ?= 127.0.0.1
WEB_PORT ?= 8080
WEB_ARGS ?=
web: venv
	$(PY) -m mambaserve.clients.web --grpc-url 127.0.0.1:$(GRPC_PORT) --host $(WEB_HOST) --port $(WEB_PORT) $(WEB_ARGS)

bench: venv system-deps
	$(PY) -m mambaserve.loadtest.streaming_bench
	$(PY) -m mambaserve.loadtest.report

bench-kernels: venv
	$(PY) -m mambaserve.kernels.bench

# The one prepared GPU check (kernels/BENCHMARKS.md, "How to run on a lent GPU"). gpu-check needs no venv
# and no network (the lent GPU machine has neither): it runs $(PYTHON) on this checkout as it is.
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHON=$(PYTHON) bash kernels/gpu_check.sh $(GPU_CHECK_ARGS)

gpu-check-clips: venv system-deps
	$(PY) -m mambaserve.kernels.gpu_check --prepare-clips

gpu-check-dry-run: venv
	$(PY) -m mambaserve.kernels.gpu_check --dry-run --out-dir /tmp/gpu_check_dry_run

soak: venv
	$(PY) -m mambaserve.loadtest.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
