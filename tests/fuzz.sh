#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default
# 20), starting from the committed seeds; fails on the first crash, leaving
# the input in fuzz/artifacts/<target>/. See docs/fuzzing.md.
#
#   tests/fuzz.sh                     # all targets, 20 s each
#   FUZZ_SECONDS=600 tests/fuzz.sh rule_file
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
# cargo-fuzz drives libFuzzer through nightly-only flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP. -s none: the targets are safe
# Rust (no unsafe on these paths), so no sanitizer is needed to see a bug.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(attach_hello rule_file uwsgi_import router_packet router_fragments compat_framing vassal_file flow_state)
cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    echo "fuzz: $t for ${seconds}s"
    cargo fuzz run -s none -O "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=8192 -print_final_stats=0 2>&1 \
        | grep -E "^Done|panicked|SUMMARY|Test unit written" || true
    # Any one kind of finding fails the run (a plain `ls` of the three globs
    # would only fail when all three kinds were present).
    if find "artifacts/$t" -maxdepth 1 \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) 2>/dev/null | grep -q .; then
        echo "fuzz: $t found a failing input (fuzz/artifacts/$t)" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
