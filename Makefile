# The everyday commands; the README uses these.
VENV ?= .venv
PY = $(VENV)/bin/python

.PHONY: install install-dev run serve test bench lint format
install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt

install-dev:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements-dev.txt

run: ## the development server on http://127.0.0.1:5000
	$(VENV)/bin/flask --app library_api run

serve: ## gunicorn as the Procfile runs it
	$(VENV)/bin/gunicorn --config gunicorn.conf.py "library_api:create_app()"

test: install-dev
	$(PY) -m pytest

bench: ## needs wrk (apt install wrk)
	$(PY) bench/run.py --sizes 10000,100000

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
