#!/usr/bin/env bash
# Installs Debian's redis-server, which the Redis broker's tests (tests/redis/,
# tests/test_broker_contract.py) and benchmarks/bench_redis.py start on a free loopback
# port of their own. The packaged service is not used: apt-get may start it, the tests
# never talk to it.
# Idempotent: a redis-server on PATH is reused. Under CI=true a failure is fatal;
# elsewhere it warns, and the tests that need Redis skip with the reason.
set -uo pipefail

STRICT=0
[ "${CI:-}" = "true" ] && STRICT=1

say() { printf 'install-redis: %s\n' "$*"; }
problem() {
    if [ "$STRICT" = 1 ]; then
        say "ERROR: $*"
        exit 1
    fi
    say "WARNING: $* (the tests that need Redis will skip)"
    exit 0
}
have() { command -v "$1" >/dev/null 2>&1; }

if have redis-server; then
    say "redis-server present ($(redis-server --version | cut -d' ' -f3))"
    exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        problem "not root and no password-less sudo; run: sudo apt-get install redis-server"
    fi
fi
have apt-get || problem "apt-get not found; install redis-server (7.x) yourself"

say "apt-get install redis-server"
# Another apt-get (unattended upgrades, install-servers.sh in parallel) may hold the dpkg
# lock for a while: wait for it rather than fail.
if ! { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q \
    && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends redis-server; }; then
    problem "apt-get install redis-server failed"
fi
have redis-server || problem "redis-server still not on PATH after apt-get"
say "redis-server installed ($(redis-server --version | cut -d' ' -f3))"
