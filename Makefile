# photo-pipeline: `make run` processes a folder of photos, `make test` runs the test suite.
# Each target installs what it needs (Debian packages, then the pinned venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PHOTOS ?= ../shared/testdata

.PHONY: run test serve bench deps run-deps venv clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

venv: $(VENV)/.installed

deps:
	./scripts/debian-deps.sh

# `make run` needs only Python and exiftool (SQLite is embedded, no broker).
run-deps:
	./scripts/debian-deps.sh python3 python3-venv python3-dev build-essential libimage-exiftool-perl

test: deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

serve: venv
	$(VENV)/bin/gunicorn -c face_api/gunicorn.conf.py face_api.app:app

run: run-deps venv
	$(PY) -m workers process $(PHOTOS)

bench: deps venv
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
