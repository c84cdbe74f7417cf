#!/usr/bin/env bash
# Builds Centrifugo v6.9.1 into .cache/bin/centrifugo with the machine's Go, through the Go
# module proxy (about 2 minutes from a cold module cache). Only benchmarks/bench_redis.py
# needs it, as the peer a team would otherwise deploy; `make test` does not.
# Idempotent: a binary that reports the pinned version is reused.
set -euo pipefail

VERSION="v6.9.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$ROOT/.cache/bin"
BIN="$BIN_DIR/centrifugo"
# `go install` leaves the binary's own version unset (0.0.0): a stamp records what was built.
STAMP="$BIN_DIR/centrifugo.stamp"

say() { printf 'install-centrifugo: %s\n' "$*"; }

if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    say "present ($BIN, $VERSION)"
    exit 0
fi
command -v go >/dev/null 2>&1 || { say "ERROR: go not found (needs Go 1.24+ and the Go module proxy)"; exit 1; }
mkdir -p "$BIN_DIR"
say "building Centrifugo $VERSION with $(go version) (first build: minutes)"
start=$(date +%s)
GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -trimpath "github.com/centrifugal/centrifugo/v6@$VERSION"
printf '%s\n' "$VERSION" >"$STAMP"
say "built in $(($(date +%s) - start)) s: $BIN"
