# The commands a user and CI run. `make setup` is idempotent and quick once done (a stamp tracks the inputs).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
DEMO_MODELS := build/demo-models
DEMO_ARCHIVES := $(DEMO_MODELS)/sentiment.tar.gz $(DEMO_MODELS)/topic.tar.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
# TensorFlow's start-up banners say nothing a user can act on.
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo serve test lint bench image clean reliability

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-cdk.txt requirements-nodeps.txt container/requirements.txt \
		pyproject.toml \
		package.json package-lock.json scripts/setup-cdk.sh
	@command -v java >/dev/null && command -v ss >/dev/null || { $(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends openjdk-17-jre-headless iproute2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	bash scripts/setup-cdk.sh
	@touch $@

$(DEMO_ARCHIVES) &: | $(STAMP)
	$(VENV)/bin/mme demo-models --out $(DEMO_MODELS)

## demo: set up, build the demo models if missing, serve them through the container's own software, predict.
demo: setup $(DEMO_ARCHIVES)
	$(VENV)/bin/mme demo --models $(DEMO_MODELS)

## serve: the demo models on a local SageMaker-style endpoint (http://127.0.0.1:8080) until Ctrl-C.
serve: setup $(DEMO_ARCHIVES)
	@echo "Call it with boto3: boto3.client('sagemaker-runtime', endpoint_url='http://127.0.0.1:8080', region_name='us-east-1',"
	@echo "  aws_access_key_id='local', aws_secret_access_key='local').invoke_endpoint(EndpointName='local',"
	@echo "  TargetModel='sentiment.tar.gz', ContentType='application/json', Body='{\"input_text\": \"I loved it\"}')"
	@echo "or: $(VENV)/bin/mme invoke --endpoint-url http://127.0.0.1:8080 --endpoint local --model topic.tar.gz --text 'a cheap flight'"
	@echo "or: curl -H 'X-Amzn-SageMaker-Target-Model: sentiment.tar.gz' -H 'Content-Type: text/plain' --data 'what a day' http://127.0.0.1:8080/endpoints/local/invocations"
	$(VENV)/bin/mme serve --store $(DEMO_MODELS) --port 8080 --cache-dir build/mme-cache

## test: lint, then every test (real MMS, real TensorFlow, real CDK synth). pytest's "no tests" (5) is a failure.
test: setup lint
	@$(PY) -m pytest tests; status=$$?; \
	if [ $$status = 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## reliability: faults, bad input and load against a running `mme serve`, with the 10-minute soak; figures in
## bench/results/. `make test` runs the same folder without the soak.
reliability: setup $(DEMO_ARCHIVES)
	MME_TEST_DEMO_MODELS=$(DEMO_MODELS) $(PY) -m pytest tests/reliability -m ""

## bench-load: 20,000 requests at concurrency 16 over three models on a local `mme serve`: errors, p50/p99,
## throughput and memory, written to bench/results/load.{json,md} (`make reliability` writes the same from its test).
.PHONY: bench-load
bench-load: setup $(DEMO_ARCHIVES)
	$(PY) bench/load.py --models $(DEMO_MODELS)

## bench: every figure of issue 11 (speed, then memory per model host mode), what telemetry costs (issue 13) and the
## latency along each path, written to bench/results/ with BENCHMARKS.md summarizing them; about 45 minutes, nothing
## else may run MMS.
bench: setup $(DEMO_ARCHIVES) bench-speed bench-density-modes bench-telemetry
	$(PY) bench/latency.py --models $(DEMO_MODELS)

## image: build container/Dockerfile as $(MME_IMAGE) on a local Docker engine (as root: installs and starts the
## engine when missing, makes the base with debootstrap once; see scripts/image.sh). Quick when nothing changed.
MME_IMAGE ?= mme-serving:local
image:
	MME_IMAGE=$(MME_IMAGE) bash scripts/image.sh build

clean:
	rm -rf build cdk.out .pytest_cache .ruff_cache

## bench-telemetry: what per-model metrics and request capture cost a request (off, metrics, capture to a folder,
## capture to a failing S3), written to bench/results/telemetry.{json,md}. Needs no other MMS running on the host.
.PHONY: bench-telemetry
bench-telemetry: setup $(DEMO_ARCHIVES)
	$(PY) bench/telemetry.py --models $(DEMO_MODELS)

## bench-speed: issue 11's speed ratios (mme serve / in process: warm p50, throughput at concurrency 8, cold first
## invoke) for a demo-size and a bert-base-shape model, written to bench/results/speed.{json,md,png}. Needs no
## other MMS running on the host.
.PHONY: bench-speed
bench-speed: setup $(DEMO_ARCHIVES)
	$(PY) bench/speed.py --models $(DEMO_MODELS)

## bench-density: memory per loaded model (PSS of the container's processes with 0-8 demo models), written to
## bench/results/density.{json,md}; `mme cost` sizes instances with it. Needs no other MMS running on the host.
.PHONY: bench-density
bench-density: setup $(DEMO_ARCHIVES)
	$(PY) bench/density.py --models $(DEMO_MODELS)

## bench-density-modes: issue 11's memory figures, both model host modes in one run: container memory with 1, 5,
## 10, 20 and 50 demo-size models (per-worker / shared), and each mode's per-model increment against the SavedModel's
## size, for demo-size models and for a bert-base-shape model, written to bench/results/density-modes*.{json,md,png}.
.PHONY: bench-density-modes
bench-density-modes: setup $(DEMO_ARCHIVES)
	$(PY) bench/density_modes.py --models $(DEMO_MODELS)
	$(PY) bench/density_modes.py --bert-base
