# Keel — one command each for the things a developer does. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

target := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# Without KEEL_BOOTSTRAP_TOKEN, an operator key is generated once into .keel/bootstrap-token
# (keelctl picks it up from there); without KEEL_MASTER_KEY(_FILE), a master key into
# .keel/master-key.
# Starts PostgreSQL, NATS and Redis if needed, builds, and runs the whole mesh (Ctrl-C stops it).
up: services
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --bins
    # No built-in secrets: a local master key, made once, is the explicit development setup.
    if [ -z "${KEEL_MASTER_KEY:-}${KEEL_MASTER_KEY_FILE:-}" ]; then
        mkdir -p .keel
        if [ ! -s .keel/master-key ]; then
            (umask 077; head -c 32 /dev/urandom | base64 > .keel/master-key)
            echo "generated a development master key in .keel/master-key"
        fi
        export KEEL_MASTER_KEY_FILE="$PWD/.keel/master-key"
    fi
    if [ -z "${KEEL_BOOTSTRAP_TOKEN:-}" ]; then
        mkdir -p .keel
        [ -s .keel/bootstrap-token ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > .keel/bootstrap-token
        export KEEL_BOOTSTRAP_TOKEN="$(cat .keel/bootstrap-token)"
        # Never print the key itself: say where it is.
        echo 'bootstrap operator key in .keel/bootstrap-token (keelctl reads it; or export KEEL_API_KEY="$(cat .keel/bootstrap-token)")'
    fi
    exec {{target}}/debug/keelctl dev up --bin-dir {{target}}/debug

# The showcase: starts the mesh if needed, creates and provisions tenants, records and shows one
# tenant's usage and estimate, shows timelines and a trace.
demo: services
    ./scripts/demo.sh

# Benchmarks are built by `just lint` and run by `just bench`, not here.
# Every test: unit, integration (real PostgreSQL, NATS, Redis) and end-to-end.
test: services
    cargo test --workspace --lib --bins --tests --no-fail-fast
    cargo test --workspace --doc

# Formatting, clippy with warnings as errors, and no crate depending on a service crate.
lint:
    cargo fmt --all -- --check
    python3 scripts/check-deps.py
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks: print figures, assert nothing.
bench: services
    cargo bench -p keel-store --bench store
    cargo bench -p keel-tenant --bench tenant
    cargo bench -p keel-timeline --bench timeline
    cargo bench -p keel-billing --bench billing
    cargo bench -p keel-provisioning --bench provisioning

# Makes sure the local PostgreSQL, NATS (JetStream) and Redis run.
services:
    ./infra/local/services.sh

fmt:
    cargo fmt --all

# Seconds each fuzz target runs, and where they are built.
fuzz_secs := "60"
fuzz_target_dir := env_var_or_default("KEEL_FUZZ_TARGET_DIR", target / "fuzz")

# Fuzz targets (fuzz/, a workspace of its own): each runs for `fuzz_secs` seconds, or stops
# at the first crash (saved under fuzz/artifacts/<target>/). Installs cargo-fuzz if missing;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take the nightly flags cargo-fuzz needs.
# `just fuzz_secs=600 fuzz`; `just fuzz jwt` runs one target. Built in KEEL_FUZZ_TARGET_DIR
# (default: <target>/fuzz, apart from the workspace's own builds).
fuzz *targets:
    #!/usr/bin/env bash
    set -euo pipefail
    export RUSTC_BOOTSTRAP=1
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    targets="{{targets}}"
    [ -n "$targets" ] || targets="$(cargo fuzz list)"
    # No unsafe code to sanitize: coverage-guided, with debug assertions and overflow checks.
    flags=(-O -a -s none --target-dir "{{fuzz_target_dir}}")
    cargo fuzz build "${flags[@]}"
    for t in $targets; do
        mkdir -p "corpus/$t"
        dict=()
        [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
        echo "== $t ({{fuzz_secs}}s)"
        cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- -max_total_time={{fuzz_secs}} "${dict[@]}" -print_final_stats=1
    done
