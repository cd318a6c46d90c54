# The two quick-start commands of README.md, and a few helpers.
PYTHON ?= python3
DEMO_DIR ?= demo_output

.PHONY: install install-test demo test lint protos

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m pip install -q --no-deps "panopticapi-lite==0.2.0" \
	    "cityscapesscripts==2.2.4"

# Quick start 1: install, then run the synthetic-data demo end to end.
demo: install
	TF_CPP_MIN_LOG_LEVEL=$${TF_CPP_MIN_LOG_LEVEL:-1} \
	    $(PYTHON) -m deeplab2_kmax.tools.demo --output_dir=$(DEMO_DIR)

# Quick start 2: install with test extras, lint, then run the tests: two
# workers, each taking whole files (a file's fixtures are built once).
test: install-test lint
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests

lint:
	$(PYTHON) -m ruff check .

protos:
	$(PYTHON) protos/build_protos.py
