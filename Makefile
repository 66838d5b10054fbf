# Both targets create .venv with the standard library's venv and install into it; both are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: build the tiny model (tokenizer + warm start), then RL with tiny_dapo over the embedded
# server and the sandbox. It fails (exit 3) when held-out pass@1 did not improve. Re-running resumes.
# The tiny job runs on the CPU: without JAX_PLATFORMS, jax would also try the TPU runtime that the dev
# extra installs for rl.plan (and print its warnings). A GPU user of rl.train sets nothing here.
run: export JAX_PLATFORMS ?= cpu
run: $(STAMP)
	@echo "== 1/2 tiny model: tokenizer, tiny Qwen3, supervised warm start -> runs/tiny/model"
	@test -f runs/tiny/model/config.json || $(BIN)/python -m rl.tiny build --out runs/tiny/model
	@echo "== 2/2 RL: python -m rl.train tiny_dapo --run-dir runs/tiny_dapo"
	$(BIN)/python -m rl.train tiny_dapo --run-dir runs/tiny_dapo --require-improvement

# The suite runs on simulated CPU devices (tests/conftest.py); TPU targets are compiled, never run.
test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf $(VENV)
