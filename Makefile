# The two commands a newcomer needs: `make run` and `make test`. Both build on `make install`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml agent/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ./agent -e '.[test]'
	touch $@

# The platform on its embedded defaults: SQLite, local files, a filesystem Celery transport, its own Mosquitto.
run: install
	scripts/ensure-system-packages.sh run
	FLEET_DEBUG=1 $(BIN)/python manage.py runplatform

# Lint, then every test against real PostgreSQL, Mosquitto and Redis started for the run.
test: install
	scripts/ensure-system-packages.sh test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
