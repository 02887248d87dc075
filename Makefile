# `make demo` and `make test` work on a fresh machine with only Python 3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench-dsb2018 clean browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instseg demo --out runs/demo

# Debian's Chromium for the web page's browser test (Playwright drives it; nothing downloads a browser
# build). Installed when missing and apt-get can run as root; elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench-dsb2018: $(STAMP)
	$(PY) benchmarks/dsb2018.py --model mask_rcnn

clean:
	rm -rf $(VENV) runs
