# The two entry points of the README. Both set the machine up first (idempotent).
.PHONY: setup demo test lint bench

setup:
	sh scripts/setup.sh

demo: setup
	sh scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run.py
