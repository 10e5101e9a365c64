# Keel — one command each for the things a developer does. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

target := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# Starts PostgreSQL, NATS and Redis if needed, builds, and runs the whole mesh (Ctrl-C stops it).
up: services
    cargo build --bins
    {{target}}/debug/keelctl dev up --bin-dir {{target}}/debug

# Every test: unit, integration (real PostgreSQL, NATS, Redis) and end-to-end.
test: services
    cargo test --workspace --all-targets --no-fail-fast

# Formatting and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks: print figures, assert nothing.
bench: services
    cargo bench -p keel-store --bench store

# Makes sure the local PostgreSQL, NATS (JetStream) and Redis run.
services:
    ./infra/local/services.sh

fmt:
    cargo fmt --all
