# photo-pipeline: `make run` processes a folder of photos, `make test` runs the test suite.
# Each target installs what it needs (Debian packages, then the pinned venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# `make run` works on a writable copy of the shared test photos: the embedded mode keeps its
# library (.photo-pipeline/: database, thumbnails) inside the folder it processes.
DEMO   := storage/demo-photos
PHOTOS ?= $(DEMO)

.PHONY: run review test serve bench deps run-deps venv clean

# The lock, then the tests' face_recognition oracle without its dependencies (it would build
# dlib from source), then this package itself (editable: the `photo-pipeline` command).
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

deps:
	./scripts/debian-deps.sh

# `make run` needs only Python and exiftool (SQLite is embedded, no broker).
run-deps:
	./scripts/debian-deps.sh python3 python3-venv python3-dev build-essential libimage-exiftool-perl

$(DEMO):
	mkdir -p $(@D)
	cp -R ../shared/testdata $@
	chmod -R u+w $@

test: deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The face API under gunicorn; its storage root defaults to ./storage.
serve: venv
	mkdir -p storage
	$(PY) -m workers serve-face-api

ifeq ($(PHOTOS),$(DEMO))
run: $(DEMO)
endif
run: run-deps venv
	$(PY) -m workers process $(PHOTOS)
	@echo "review the faces: make review (= $(VENV)/bin/photo-pipeline review $(PHOTOS)), then open the address it prints"

# The face review page of the folder `make run` processed (127.0.0.1:8765; Ctrl-C stops it).
review: venv
	$(PY) -m workers review $(PHOTOS)

bench: deps venv
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
