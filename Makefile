# Set-up and everyday commands. `make example` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The data directory: $SCARCE_DATA_DIR if set and not empty, else ../shared/data when that folder exists.
ifeq ($(strip $(SCARCE_DATA_DIR)),)
SCARCE_DATA_DIR := $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
endif
export SCARCE_DATA_DIR

.PHONY: install example test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

example: install
	$(VENV)/bin/scarce train --config examples/pneumonia.toml --out runs/example --overwrite

test: install
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
