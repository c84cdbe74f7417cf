#!/usr/bin/env bash
# Installs the servers that the end-to-end tests (tests/backends/) run against:
#   - Prometheus, promtool, Alertmanager and amtool from Debian's packages
#     (prometheus, prometheus-alertmanager);
#   - chromium, for the SSE bridge's browser tests;
#   - Jaeger v2, built with the machine's Go through the Go module proxy into
#     .cache/bin/jaeger (git-ignored), from the tool module in deploy/jaeger/;
#   - Sloth, the SLO rule generator (deploy/sloth/generate.py), built the same way into
#     .cache/bin/sloth from the tool module in deploy/sloth/.
# Idempotent: what is present is reused; a Go tool is rebuilt only when its go.mod or
# go.sum change. Under CI=true any failure is fatal; elsewhere it warns and goes on,
# and the tests that need a missing server skip with the reason.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STRICT=0
[ "${CI:-}" = "true" ] && STRICT=1
STATUS=0

say() { printf 'install-servers: %s\n' "$*"; }
problem() {
    if [ "$STRICT" = 1 ]; then
        say "ERROR: $*"
        STATUS=1
    else
        say "WARNING: $* (the tests that need it will skip)"
    fi
}

have() { command -v "$1" >/dev/null 2>&1; }

# --- Debian packages ---------------------------------------------------------------------
missing_pkgs=()
{ have prometheus && have promtool; } || missing_pkgs+=(prometheus)
{ { have prometheus-alertmanager || have alertmanager; } && have amtool; } \
    || missing_pkgs+=(prometheus-alertmanager)
{ have chromium || have chromium-browser; } || missing_pkgs+=(chromium)

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        if have sudo && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
    fi
    if ! have apt-get; then
        problem "apt-get not found; install ${missing_pkgs[*]} yourself"
    elif [ "$(id -u)" != 0 ] && [ "${#SUDO[@]}" = 0 ]; then
        problem "not root and no password-less sudo; run: sudo apt-get install ${missing_pkgs[*]}"
    else
        say "apt-get install ${missing_pkgs[*]}"
        # Another apt-get (unattended upgrades, a parallel install) holds the dpkg lock
        # for a while: wait for it instead of failing.
        if ! { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q \
            && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 \
                install -y -q --no-install-recommends "${missing_pkgs[@]}"; }; then
            problem "apt-get install ${missing_pkgs[*]} failed"
        fi
    fi
else
    say "prometheus, promtool, alertmanager, amtool, chromium: present"
fi

# --- Go tools: Jaeger v2, Sloth --------------------------------------------------------
# Each deploy/<tool>/go.mod declares the tool's main package as a Go tool of a small module
# of ours. The Go module proxy refuses `go install jaeger/cmd/jaeger@<v1.76.0 or a commit>`
# (a replace directive in Jaeger's go.mod, and commits it does not serve), but inside a
# module the dependency's replace directives do not apply, so `go build` of the tool works.
BIN_DIR="$ROOT/.cache/bin"

# build_go_tool NAME PACKAGE: .cache/bin/NAME from deploy/NAME/go.mod, unless already built
# from the same go.mod and go.sum (a stamp file holds their hash).
build_go_tool() {
    local name="$1" package="$2"
    local dir="$ROOT/deploy/$name" bin="$BIN_DIR/$name" stamp="$BIN_DIR/$name.stamp"
    local want_stamp
    want_stamp="$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1)"
    if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want_stamp" ]; then
        say "$name: present ($bin)"
        return
    fi
    if ! have go; then
        problem "go not found: cannot build $name (needs the Go of $dir/go.mod and the Go module proxy)"
        return
    fi
    mkdir -p "$BIN_DIR"
    say "building $name with $(go version) (first build: minutes; the module cache is reused)"
    local start tmp
    start=$(date +%s)
    tmp="$bin.tmp.$$"
    if (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$tmp" "$package"); then
        mv -f "$tmp" "$bin"
        printf '%s\n' "$want_stamp" >"$stamp"
        say "$name built in $(($(date +%s) - start)) s: $bin"
    else
        rm -f "$tmp"
        problem "building $name failed after $(($(date +%s) - start)) s"
    fi
}

build_go_tool jaeger github.com/jaegertracing/jaeger/cmd/jaeger
build_go_tool sloth github.com/slok/sloth/cmd/sloth

exit "$STATUS"
