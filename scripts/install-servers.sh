#!/usr/bin/env bash
# Installs the servers that the end-to-end tests (tests/backends/) run against:
#   - Prometheus, promtool, Alertmanager and amtool from Debian's packages
#     (prometheus, prometheus-alertmanager);
#   - chromium, for the SSE bridge's browser tests;
#   - Jaeger v2, built with the machine's Go through the Go module proxy into
#     .cache/bin/jaeger (git-ignored), from the tool module in deploy/jaeger/.
# Idempotent: what is present is reused; Jaeger is rebuilt only when deploy/jaeger/go.mod
# or go.sum change. Under CI=true any failure is fatal; elsewhere it warns and goes on,
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
        if ! { "${SUDO[@]}" apt-get update -q \
            && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q \
                --no-install-recommends "${missing_pkgs[@]}"; }; then
            problem "apt-get install ${missing_pkgs[*]} failed"
        fi
    fi
else
    say "prometheus, promtool, alertmanager, amtool, chromium: present"
fi

# --- Jaeger v2 ---------------------------------------------------------------------------
# deploy/jaeger/go.mod declares cmd/jaeger as a Go tool of a small module of ours. The Go
# module proxy refuses `go install jaeger/cmd/jaeger@<v1.76.0 or a commit>` (a replace
# directive in Jaeger's go.mod, and commits it does not serve), but inside a module the
# dependency's replace directives do not apply, so `go build` of the tool works.
BIN_DIR="$ROOT/.cache/bin"
JAEGER="$BIN_DIR/jaeger"
STAMP="$BIN_DIR/jaeger.stamp"
want_stamp="$(cat "$ROOT/deploy/jaeger/go.mod" "$ROOT/deploy/jaeger/go.sum" | sha256sum | cut -d' ' -f1)"

if [ -x "$JAEGER" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want_stamp" ]; then
    say "jaeger: present ($JAEGER)"
elif ! have go; then
    problem "go not found: cannot build Jaeger (needs Go >= 1.24.6 and the Go module proxy)"
else
    mkdir -p "$BIN_DIR"
    say "building Jaeger with $(go version) (first build: minutes; the module cache is reused)"
    start=$(date +%s)
    tmp="$JAEGER.tmp.$$"
    if (cd "$ROOT/deploy/jaeger" \
        && CGO_ENABLED=0 go build -trimpath -o "$tmp" github.com/jaegertracing/jaeger/cmd/jaeger); then
        mv -f "$tmp" "$JAEGER"
        printf '%s\n' "$want_stamp" >"$STAMP"
        say "jaeger built in $(($(date +%s) - start)) s: $JAEGER"
    else
        rm -f "$tmp"
        problem "building Jaeger failed after $(($(date +%s) - start)) s"
    fi
fi

exit "$STATUS"
