#!/usr/bin/env bash
# Installs the real Codex CLI that tests/codex/ drives: npm's @openai/codex at the pinned
# version below, into .cache/codex/ (git-ignored). The native binary ships inside the npm
# package (@openai/codex-linux-x64 and siblings); nothing is downloaded by URL.
# Idempotent: a present install of the pinned version is reused.
# Under CI=true a failure is fatal; elsewhere it warns, and the Codex tests skip.
set -uo pipefail

CODEX_VERSION="0.171.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.cache/codex"
CODEX="$PREFIX/node_modules/.bin/codex"

say() { printf 'install-codex: %s\n' "$*"; }
fail() {
    if [ "${CI:-}" = "true" ]; then
        say "ERROR: $*"
        exit 1
    fi
    say "WARNING: $* (the Codex tests will skip)"
    exit 0
}

installed_version() { "$CODEX" --version 2>/dev/null | awk '{print $NF}'; }

if [ -x "$CODEX" ] && [ "$(installed_version)" = "$CODEX_VERSION" ]; then
    say "codex $CODEX_VERSION: present ($CODEX)"
    exit 0
fi
command -v npm >/dev/null 2>&1 || fail "npm not found: install Node.js >= 18 and npm"

mkdir -p "$PREFIX"
# A package.json of its own keeps npm from walking up to another project's.
[ -f "$PREFIX/package.json" ] || printf '{"private": true}\n' >"$PREFIX/package.json"
say "npm install @openai/codex@$CODEX_VERSION into $PREFIX"
if ! npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "@openai/codex@$CODEX_VERSION"; then
    fail "npm install @openai/codex@$CODEX_VERSION failed"
fi
got="$(installed_version)"
[ "$got" = "$CODEX_VERSION" ] || fail "codex --version says '$got', wanted $CODEX_VERSION"
say "codex $CODEX_VERSION installed: $CODEX"
