#!/usr/bin/env bash
# Set up mdoc's ARM edge-device route on an x86-64 Debian machine: a cross
# compiler for aarch64 and an arm64 Debian root, run under qemu user-mode
# emulation, in which the aarch64 TVM runtime can load and run what mdoc builds.
#
#   sudo .ci/setup-arm.sh            # idempotent; a second run takes a few seconds
#
# Run as root (apt-get and chroot), no interaction.  Environment:
#   MDOC_ARM_ROOT        where the arm64 root lives (default $HOME/.cache/mdoc/arm64-root);
#                        mdoc.tooling.emulation finds it through the same variable.
#   MDOC_DEBIAN_MIRROR   Debian mirror for the root (default: the one apt uses here).
#   MDOC_ARM_SLIM=1      drop the TVM compiler library (240 MB) and headers from the
#                        root: emulated runs only need the runtime library.
#   MDOC_PIP             pip command used to fetch the aarch64 wheels (default: the
#                        first of `python3 -m pip` and `/usr/bin/python3 -m pip` that works).
#
# How the root is made, and why this way:
#   * mmdebstrap --variant=extract downloads python3 (3.11 on bookworm) and its
#     dependencies for arm64 and only unpacks them: no maintainer script runs, so
#     nothing runs under emulation and the whole root takes seconds, against minutes
#     for debootstrap's second stage under qemu.
#   * the aarch64 wheels (apache-tvm, apache-tvm-ffi, numpy and their dependencies)
#     are installed from the host with `pip install --platform manylinux_2_28_aarch64
#     --target`, into /opt/mdoc/site-packages in the root, put on sys.path by a .pth;
#     there is no pip inside the root and no emulated pip run.
#   * the root's own ldconfig (under qemu, in a chroot) writes its ld.so.cache, and
#     the root's python byte-compiles its standard library once, so that later
#     runs, by any user, do not recompile it under emulation on every start.
# The root is used with `qemu-aarch64-static -L $MDOC_ARM_ROOT
# $MDOC_ARM_ROOT/usr/bin/python3.11` (no chroot or binfmt_misc needed), or with
# `chroot $MDOC_ARM_ROOT /usr/bin/qemu-aarch64-static /usr/bin/python3.11` as root.
set -euo pipefail

SUITE=bookworm            # pins python3.11, which the cp311 wheels below need
PYVER=3.11
TVM_PIN="apache-tvm==0.27.0.post1"
FFI_PIN="apache-tvm-ffi==0.1.14.post0"
# numpy, ml_dtypes and typing_extensions are what apache-tvm needs; pinned so the root is reproducible
EXTRA_PINS=("numpy==2.4.6" "ml_dtypes==0.6.0" "typing_extensions==4.16.0")
WHEEL_PLATFORM=manylinux_2_28_aarch64
APT_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static mmdebstrap)
ROOT_PACKAGES="python3,libc-bin,libstdc++6"

ROOT="${MDOC_ARM_ROOT:-$HOME/.cache/mdoc/arm64-root}"
SLIM="${MDOC_ARM_SLIM:-0}"
START=$(date +%s)

say() { printf 'setup-arm: %s\n' "$*" >&2; }
die() { printf 'setup-arm: error: %s\n' "$*" >&2; exit 1; }
step_start() { STEP_T0=$EPOCHREALTIME; say "$1"; }
step_done() { say "$(awk -v a="$STEP_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "  done in %.1f s", b - a }')"; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages with apt-get and uses chroot)"
[[ $(uname -m) == x86_64 ]] || say "warning: tested on x86_64 hosts only, this is $(uname -m)"
case "$ROOT" in /*) ;; *) die "MDOC_ARM_ROOT must be an absolute path, got '$ROOT'" ;; esac

# ---------------------------------------------------------------- host packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    step_start "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends would drop libc6-dev-arm64-cross (a Recommends of
    # gcc-aarch64-linux-gnu): it is listed above, or linking fails on crti.o.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    step_done
else
    say "host packages already installed: ${APT_PACKAGES[*]}"
fi
# (newer Debian ships the static emulator as qemu-aarch64 in qemu-user)
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64) ||
    die "qemu-aarch64-static is not on PATH after installing qemu-user-static"

# ------------------------------------------------------------- debian mirror
detect_mirror() {
    # The first enabled `deb` source for the host's own codename, from one-line
    # (sources.list, *.list) or deb822 (*.sources) files: the mirror apt uses here.
    local codename f
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || return 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v cn="$codename" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == cn) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v cn="$codename" -v RS= '
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                n = split($0, lines, "\n")
                for (k = 1; k <= n; k++) {
                    line = lines[k]
                    if (line ~ /^#/) continue
                    if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line);   types = line }
                    if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line);    uris = line }
                    if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line);  suites = line }
                    if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = line }
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                if ((" " suites " ") ~ (" " cn " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done
}
MIRROR="${MDOC_DEBIAN_MIRROR:-$(detect_mirror | head -n 1)}"
[[ -n $MIRROR ]] || die "found no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/; set MDOC_DEBIAN_MIRROR"
MIRROR="${MIRROR%/}"

# --------------------------------------------------------------- arm64 root
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9 || die "could not lock $ROOT.lock"

PY="$ROOT/usr/bin/python$PYVER"
if [[ -x $PY && -x $ROOT/sbin/ldconfig ]]; then
    say "arm64 root already in place: $ROOT"
else
    if [[ -e $ROOT ]]; then
        if [[ -d $ROOT && -z $(ls -A "$ROOT") ]]; then
            rmdir "$ROOT"
        else
            die "$ROOT exists but holds no arm64 python$PYVER: remove it, or point MDOC_ARM_ROOT elsewhere"
        fi
    fi
    step_start "mmdebstrap $SUITE arm64 ($ROOT_PACKAGES) from $MIRROR"
    aptopts=()
    # follow the host's apt where it accepts expired Release files (snapshot mirrors)
    if apt-config dump Acquire::Check-Valid-Until | grep -qi '"false"'; then
        aptopts+=(--aptopt='Acquire::Check-Valid-Until "false"')
    fi
    tmp="$ROOT.tmp.$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --mode=root --variant=extract --arch=arm64 --components=main \
        --include="$ROOT_PACKAGES" "${aptopts[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$tmp" "$MIRROR"
    [[ -x $tmp/usr/bin/python$PYVER ]] || die "mmdebstrap finished but $tmp/usr/bin/python$PYVER is missing"
    rm -f "$tmp/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
    chmod 1777 "$tmp/tmp"
    mv "$tmp" "$ROOT"
    trap - EXIT
    step_done
fi

# The static qemu inside the root makes `chroot $ROOT /usr/bin/qemu-aarch64-static ...`
# work without binfmt_misc (which containers often lack).
if ! cmp -s "$QEMU" "$ROOT/usr/bin/qemu-aarch64-static"; then
    cp "$QEMU" "$ROOT/usr/bin/qemu-aarch64-static"
fi

if [[ ! -s $ROOT/etc/ld.so.cache ]]; then
    # Without its own cache the emulated loader reads the host's (x86-64) one
    # through qemu -L's fallback to host paths; harmless but slow and confusing.
    step_start "ldconfig in the root"
    chroot "$ROOT" /usr/bin/qemu-aarch64-static /sbin/ldconfig
    step_done
fi

if [[ ! -e $ROOT/usr/lib/python$PYVER/__pycache__/os.cpython-${PYVER/./}.pyc ]]; then
    step_start "byte-compiling the root's python$PYVER standard library under qemu"
    "$QEMU" -L "$ROOT" "$PY" -I -m compileall -q -j 2 -x '/(test|tests|idlelib|lib2to3)/' \
        "$ROOT/usr/lib/python$PYVER" >/dev/null || die "compileall of the root's standard library failed"
    step_done
fi

# ------------------------------------------------------------ aarch64 wheels
SITE="$ROOT/opt/mdoc/site-packages"
PINS="$TVM_PIN $FFI_PIN ${EXTRA_PINS[*]} slim=$SLIM"
if [[ -f $SITE/.mdoc-pins && $(cat "$SITE/.mdoc-pins") == "$PINS" ]]; then
    say "aarch64 wheels already installed: $PINS"
else
    if [[ -n ${MDOC_PIP:-} ]]; then
        read -r -a PIP <<<"$MDOC_PIP"
    elif python3 -m pip --version >/dev/null 2>&1; then
        PIP=(python3 -m pip)
    elif /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
        PIP=(/usr/bin/python3 -m pip)
    else
        say "no pip on this machine: apt-get install python3-pip"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        PIP=(/usr/bin/python3 -m pip)
    fi
    step_start "pip install aarch64 wheels: $TVM_PIN $FFI_PIN ${EXTRA_PINS[*]}"
    rm -rf "$SITE.tmp"
    # --target is the one install mode pip allows with --platform; the host pip
    # resolves and unpacks, nothing runs under emulation.
    "${PIP[@]}" install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --only-binary=:all: --platform "$WHEEL_PLATFORM" \
        --python-version "$PYVER" --implementation cp --target "$SITE.tmp" \
        "$TVM_PIN" "$FFI_PIN" "${EXTRA_PINS[@]}"
    if [[ $SLIM == 1 ]]; then
        # the runtime-only import path (TVM_USE_RUNTIME_LIB=1) never loads these
        rm -rf "$SITE.tmp/tvm/lib/libtvm_compiler.so" "$SITE.tmp/tvm/lib/libtvm_runtime_cuda.so" \
            "$SITE.tmp/tvm/3rdparty"
        # (tvm_ffi/lib/libtvm_ffi_testing.so stays: tvm_ffi's core extension links it)
    fi
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
    # a .pth in the root's dist-packages puts the wheels on sys.path both under
    # `qemu -L` (paths resolve into the root) and inside a chroot
    mkdir -p "$ROOT/usr/lib/python3/dist-packages"
    echo /opt/mdoc/site-packages >"$ROOT/usr/lib/python3/dist-packages/mdoc-site.pth"
    step_done
fi

# ---------------------------------------------------------------- smoke test
step_start "smoke test: import the aarch64 TVM runtime under qemu"
# the same runtime-only import path as mdoc.tooling.emulation's runner
version=$(env -i TVM_USE_RUNTIME_LIB=1 "$QEMU" -L "$ROOT" "$PY" -I -c '
import platform, numpy, tvm
from tvm.runtime.vm import VirtualMachine
assert platform.machine() == "aarch64", platform.machine()
print(tvm.__version__, numpy.__version__)') ||
    die "the aarch64 python in $ROOT cannot import the TVM runtime; run again, and if that fails too, remove $ROOT"
step_done
# recorded only now, so that a failed install is redone by the next run
echo "$PINS" >"$SITE/.mdoc-pins"

cat >"$ROOT/.mdoc-arm-root" <<EOF
suite=$SUITE
mirror=$MIRROR
python=$PYVER
tvm_numpy=$version
pins=$PINS
EOF
say "ready: $ROOT ($(du -sh "$ROOT" | cut -f1); tvm, numpy = $version) in $(($(date +%s) - START)) s"
