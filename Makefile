# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lncr-installed

.PHONY: demo test test-fast lint install browser bench constraints clean

# TORCH_INDEX: PyTorch's index for another CUDA build (a driver older than CUDA 13), e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu126
# installs the pinned torch/torchvision versions from there, then the rest with the other pins.
TORCH_INDEX ?=
PINS := $(if $(TORCH_INDEX),$(VENV)/constraints-local.txt,constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) \
		$$(grep -E '^(torch|torchvision)==' constraints.txt)
	grep -v -E '^(torch|torchvision)==' constraints.txt > $(PINS)
endif
	$(BIN)/python -m pip install --quiet -c $(PINS) -e '.[test,demo]'
	$(BIN)/python -m pip install --quiet --no-deps -c $(PINS) staintools spams-bin
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lncr demo demo-output

# The report's browser test drives Debian's headless Chromium (through Playwright).
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

# --dist loadfile: one file's tests on one worker, so a module's fixtures (a trained study) are
# built once. (pytest-xdist's xdist_group marks have no effect under pytest 9: xdist sets a
# node-id attribute pytest 9 no longer reads.)
test: $(STAMP) browser lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=12

# Everything but the tests marked slow (training, the demo, Ray, torchrun, the browser,
# kill-and-resume): under 2 minutes on a 2-core machine, for the edit-test loop.
test-fast: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/stain.py
	$(BIN)/python bench/tiling.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/sweep.py --halving

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^lncr' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info src/*.egg-info
