# Two entry points for a fresh machine (README.md): `make demo` and `make test`.
# Both create .venv on first use; later runs reuse it (delete .venv to rebuild).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.svgen-installed
export DS_BUILD_OPS := 0
# Keep JIT-built extensions (DeepSpeed ops) inside the venv, not in ~/.cache.
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions

.PHONY: demo test test-fast env clean ui-check

# uv installs the pinned set in well under a minute where pip takes about five. It gets the
# find-links folder of the machine's pip config (where CPU-only machines keep the CPU torch wheel)
# since uv does not read pip's config. --compile-bytecode as pip does: with PYTHONDONTWRITEBYTECODE
# set (as on these machines) every test subprocess would otherwise recompile torch, transformers,
# deepspeed and mlflow from source, which doubled the suite's time.
UV_VERSION := 0.13.8
FIND_LINKS := $(strip $(PIP_FIND_LINKS) $(shell $(PY) -m pip config get global.find-links 2>/dev/null))
UV_FLAGS := $(foreach d,$(sort $(FIND_LINKS)),--find-links $(d))

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(UV_FLAGS) -e '.[test,triton]'
	# torchaudio 2.11's wheel links its native ops against CUDA libs; on a CPU-only torch the
	# import fails (and transformers imports torchaudio). svgen uses only torchaudio's pure-Python
	# parts (MelSpectrogram, resample), so drop the native libs when torch has no CUDA.
	$(BIN)/python -c "import torch, pathlib, importlib.util as u; \
	  d = pathlib.Path(u.find_spec('torchaudio').origin).parent / 'lib'; \
	  [p.unlink() for p in d.glob('*.so')] if torch.version.cuda is None else None"
	$(BIN)/python -c "import torchaudio, diffusers, transformers"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m launch.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 tests

# The single-process tier only (about a third of the suite's time): for a quick check while
# developing. `make test` (and CI) runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not multiprocess" tests

# The demo's MLflow run as a user sees it, in headless Chromium with screenshots (after `make
# demo`; needs the system's chromium and chromium-driver, e.g. apt-get install chromium chromium-driver).
ui-check: $(STAMP)
	$(BIN)/uv pip install -q --python $(BIN)/python $(UV_FLAGS) -e '.[browser]'
	$(BIN)/python launch/mlflow_ui_check.py --store sqlite:///runs/demo/mlflow.db --out runs/ui_check

clean:
	rm -rf runs/demo .pytest_cache
