#!/usr/bin/env bash
# lparos front door: set-up, build, boot, demos, tests, benchmarks.
# Run `./run.sh help` for the commands.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    cat <<'USAGE'
usage: ./run.sh <command> [options]

commands:
  setup              install what lparos needs on this machine (qemu-system-x86,
                     redis-tools)
  build              build the guest kernel (release: production and test
                     images, and the empty PVH kernel) and lparhv
  boot [options]     build and boot one guest with a virtio disk and NIC;
                     Ctrl-C or --timeout SECONDS stops it
  demo [failover]    the main demo: an active/standby cluster fails over when
                     the active partition dies (heartbeats, deact, rem_pci,
                     add_pci, act), with every step timed
  demo lan [opts]    partitions exchanging checked UDP/TCP traffic on a LAN
  demo vios          VIOS planned restart (PAUSE/RESUME) and crash (freeze)
  test               check formatting and lints (cargo fmt, clippy -D warnings),
                     then run every test (unit, property and QEMU integration)
  bench NAME         benchmark, figures printed (see docs/benchmarks.md):
                     boot, hotplug, hcall, vios; runs a release lparhv
                     (every other command runs the debug build)
  fuzz [--seconds N] [TARGET]
                     coverage-guided fuzzing (libFuzzer) of every decoder,
                     N seconds per target (default 60); see docs/fuzzing.md
  help               this text

options understood everywhere:
  --accel auto|kvm|tcg   accelerator (default auto: KVM if it can run lparos,
                         else TCG; the choice and the reason are printed)
boot options: --timeout S, --memory MIB, --machine q35|pc, --disk FILE,
              --ip A.B.C.D/N, --append "WORDS"
demo lan options: --guests N, --count N; demo vios: --guests N, --down S
USAGE
}

say() { printf '==> %s\n' "$*" >&2; }

# qemu-system-x86 (QEMU 7.2 on Debian 12) with its qboot firmware, and
# redis-tools (redis-cli, redis-benchmark: the clients of the key-value
# service, docs/kvstore.md).
setup() {
    local missing=""
    command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -f /usr/share/qemu/qboot.rom ] || missing="qemu-system-x86"
    command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
    [ -n "$missing" ] || return 0
    say "missing: ${missing# }: installing with apt-get (--no-install-recommends)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "run.sh: need root or sudo to install $missing" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086 # the package list is meant to split
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo "run.sh: qemu-system-x86 did not install" >&2; exit 1; }
    command -v redis-cli >/dev/null 2>&1 || say "redis-tools did not install: the key-value tests will say SKIPPED"
    say "installed: ${missing# } ($(qemu-system-x86_64 --version | head -n1))"
}

# Two kernel images: the test image (feature test-services: the behaviours
# tests, demos and benchmarks drive) as target/release/lparos-test, then the
# production image as target/release/lparos; and the empty PVH kernel that
# `bench boot` uses as its floor. Cargo keeps both kernel builds, so
# switching between them only relinks.
build_kernels() {
    say "building the lparos test image (release, feature test-services)"
    cargo build --release -q -p lparos-kernel --bin lparos --features test-services
    cp target/release/lparos target/release/lparos-test.new
    mv -f target/release/lparos-test.new target/release/lparos-test
    say "building the lparos kernel (release)"
    cargo build --release -q -p lparos-kernel --bin lparos
    say "building the empty PVH kernel (boot benchmark floor)"
    cargo build --release -q -p lparos-kernel --bin lparos-empty
}

build() {
    build_kernels
    say "building lparhv (debug)"
    cargo build -q -p lparhv
}

# Benchmarks time lparhv's own work (the hypercall daemon, QMP, the event
# polling), so they run an optimised lparhv; everything else keeps debug.
build_bench() {
    build_kernels
    say "building lparhv (release, for benchmarks)"
    cargo build --release -q -p lparhv
}

# --- fuzz: libFuzzer targets in fuzz/ (docs/fuzzing.md) --------------------
FUZZ_TARGETS="hcall_frames hcall_messages rootvg_label rootvg_metadata config qmp console_event resp"

# libFuzzer itself is C++, built by the libfuzzer-sys crate.
fuzz_setup() {
    command -v c++ >/dev/null 2>&1 && return 0
    say "a C++ compiler is missing (libFuzzer is C++): installing g++ with apt-get"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
}

# Stable Rust: SanitizerCoverage through codegen flags, no ASan (safe Rust;
# panics, debug assertions and overflow checks are what crash). An explicit
# --target keeps the flags off build scripts and proc macros, and the fuzz
# crate's own target directory keeps them out of the main build.
fuzz_build() {
    FUZZ_HOST=$(rustc -vV | sed -n 's/^host: //p')
    FUZZ_BIN="$PWD/fuzz/target/$FUZZ_HOST/release"
    say "building the fuzz targets (libFuzzer, SanitizerCoverage)"
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        cargo build --release -q --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --target "$FUZZ_HOST"
}

# Runs one target for $1 seconds; prints executions, coverage and the result.
# Returns non-zero if it crashed (the input is kept under fuzz/artifacts/).
fuzz_one() {
    local target=$1 seconds=$2 log rc=0 max_len=4096
    case "$target" in hcall_*) max_len=9000 ;; esac
    log="fuzz/artifacts/$target/last-run.log"
    mkdir -p "fuzz/corpus-work/$target" "fuzz/artifacts/$target" "fuzz/corpus/$target"
    "$FUZZ_BIN/$target" -max_total_time="$seconds" -timeout=10 -max_len="$max_len" \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" \
        "fuzz/corpus-work/$target" "fuzz/corpus/$target" >"$log" 2>&1 || rc=$?
    local execs cov ft units
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
    units=$(grep -o 'corp: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
    printf '%-16s %6ss  execs %10s  cov %5s  ft %6s  corpus %5s  crashes %s\n' \
        "$target" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${units:-?}" "$([ $rc = 0 ] && echo 0 || echo 1)"
    if [ $rc != 0 ]; then
        local input
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        grep -m1 -E "panicked at|ERROR: libFuzzer" -A2 "$log" >&2 || true
        echo "  crash input: ${input:-see $log}" >&2
        echo "  replay:      $FUZZ_BIN/$target ${input:-<input>}" >&2
        echo "  full log:    $log" >&2
        return 1
    fi
}

fuzz() {
    local seconds=60 only="" t failed=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --seconds) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh fuzz: --seconds takes a positive whole number" >&2; exit 2; }
                       seconds=$2; shift 2 ;;
            -*) echo "run.sh fuzz: unknown option $1" >&2; usage >&2; exit 2 ;;
            *) [[ " $FUZZ_TARGETS " == *" $1 "* ]] || { echo "run.sh fuzz: unknown target $1 (targets: $FUZZ_TARGETS)" >&2; exit 2; }
               only=$1; shift ;;
        esac
    done
    fuzz_setup
    fuzz_build
    for t in ${only:-$FUZZ_TARGETS}; do
        fuzz_one "$t" "$seconds" || failed=1
    done
    [ $failed = 0 ] || { say "fuzzing found a crash (see above)"; exit 1; }
}

# Formatting (rustfmt.toml) and clippy with warnings as errors, over every
# target: the host crates with their tests, the kernel's host-tested library,
# and the bare-metal kernel binaries in both images. (The kernel binaries
# cannot be checked with --all-targets: their test harness would link std's
# panic handler beside the kernel's own.)
lint() {
    say "checking formatting (cargo fmt --check)"
    cargo fmt --all --check || { echo "run.sh: run 'cargo fmt --all' and commit the result" >&2; exit 1; }
    say "checking lints (cargo clippy, warnings are errors)"
    cargo clippy -q --workspace --exclude lparos-kernel --all-targets -- -D warnings
    cargo clippy -q -p lparos-kernel --lib --tests -- -D warnings
    cargo clippy -q -p lparos-kernel --bins -- -D warnings
    cargo clippy -q -p lparos-kernel --bins --features test-services -- -D warnings
}

export LPAROS_KERNEL="$PWD/target/release/lparos"
export LPAROS_TEST_KERNEL="$PWD/target/release/lparos-test"
LPARHV="$PWD/target/debug/lparhv"

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    build) build ;;
    boot)
        setup; build
        exec "$LPARHV" boot "$@" ;;
    demo)
        setup; build
        if [ $# -eq 0 ] || [[ "$1" == --* ]]; then set -- failover "$@"; fi
        exec "$LPARHV" demo "$@" ;;
    test)
        [ $# -eq 0 ] || { echo "run.sh test takes no options" >&2; usage >&2; exit 2; }
        setup; build
        lint
        say "running all tests"
        cargo test -q --workspace -- --test-threads=2 ;;
    bench)
        [ $# -gt 0 ] || { echo "run.sh bench: say which benchmark (boot, hotplug, hcall, vios)" >&2; usage >&2; exit 2; }
        setup; build_bench
        LPARHV="$PWD/target/release/lparhv"
        say "running $LPARHV (release build); images $LPAROS_KERNEL (production) and $LPAROS_TEST_KERNEL (test)"
        exec "$LPARHV" bench "$@" ;;
    fuzz) fuzz "$@" ;;
    help|-h|--help) usage ;;
    *)
        echo "run.sh: unknown command '$cmd'" >&2
        usage >&2
        exit 2 ;;
esac
