#!/usr/bin/env bash
# Installs the .deb for real on this (throwaway CI) machine, checks what the maintainer
# scripts did, runs the installed service command as its user, then purges and checks
# that everything is gone. Needs root and dpkg; refuses to touch an existing install.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs the package)"
if dpkg -s haproxy-grpc-agent >/dev/null 2>&1; then
    fail "haproxy-grpc-agent is already installed here; not touching it"
fi
deb=$(ls target/packages/*.deb)
command -v adduser >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q adduser

echo "== dpkg -i $deb"
dpkg -i "$deb"
trap 'dpkg --purge haproxy-grpc-agent >/dev/null 2>&1 || true' EXIT

getent passwd haproxy-grpc-agent >/dev/null || fail "no haproxy-grpc-agent user"
[ "$(stat -c '%a %U %G' /etc/haproxy-grpc-agent/config.toml)" = "640 root haproxy-grpc-agent" ] \
    || fail "config.toml is $(stat -c '%a %U %G' /etc/haproxy-grpc-agent/config.toml), want 640 root haproxy-grpc-agent"
[ -L /etc/systemd/system/multi-user.target.wants/haproxy-grpc-agent.service ] \
    || fail "the unit is not enabled"
man -w haproxy-grpc-agent >/dev/null || fail "man haproxy-grpc-agent finds no page"

echo "== the service's commands, as the service user"
as_service() {
    # setpriv execs (no child process), so signals reach the agent itself.
    setpriv --reuid=haproxy-grpc-agent --regid=haproxy-grpc-agent --init-groups \
        env HAPROXY_AGENT_CONFIG=/etc/haproxy-grpc-agent/config.toml "$@"
}
as_service /usr/bin/haproxy-grpc-agent --check-config >/dev/null || fail "ExecStartPre fails"
log=$(mktemp)
# Started directly (not through the function), so $! is the agent's own pid.
setpriv --reuid=haproxy-grpc-agent --regid=haproxy-grpc-agent --init-groups \
    env HAPROXY_AGENT_CONFIG=/etc/haproxy-grpc-agent/config.toml \
    /usr/bin/haproxy-grpc-agent --server-bind 127.0.0.1 --server-port 0 --metrics-port 0 >"$log" 2>&1 &
agent=$!
admin=""
for _ in $(seq 100); do
    admin=$(grep -o '"admin_addr":"[^"]*' "$log" | cut -d'"' -f4 || true)
    [ -n "$admin" ] && break
    sleep 0.1
done
[ -n "$admin" ] || { cat "$log"; fail "the installed agent did not start"; }
python3 - "$admin" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=5) as r:
    assert r.status == 200, r.status
PY
kill -HUP "$agent"   # reload with the packaged config
for _ in $(seq 100); do
    grep -q '"configuration reloaded"' "$log" && break
    sleep 0.1
done
grep -q '"configuration reloaded"' "$log" || { cat "$log"; fail "SIGHUP did not reload"; }
kill -TERM "$agent"
wait "$agent" || fail "the installed agent did not exit 0 on SIGTERM"
echo "ok: installed, started as haproxy-grpc-agent, answered /healthz, reloaded, stopped"
rm -f "$log"

echo "== upgrade keeps a locally edited configuration"
echo '# edited by the operator' >>/etc/haproxy-grpc-agent/config.toml
next=$(mktemp -d)
version=$(dpkg-deb --field "$deb" Version)
cargo deb --no-build --locked --deb-version "${version%-*}-99" --output "$next/" >/dev/null
dpkg -i "$next"/*.deb
rm -rf "$next"
[ "$(dpkg-query -W -f '${Version}' haproxy-grpc-agent)" = "${version%-*}-99" ] || fail "upgrade did not install"
[ "$(tail -n 1 /etc/haproxy-grpc-agent/config.toml)" = '# edited by the operator' ] \
    || fail "the upgrade replaced the edited config.toml"
[ "$(stat -c '%a %G' /etc/haproxy-grpc-agent/config.toml)" = "640 haproxy-grpc-agent" ] \
    || fail "the upgrade changed config.toml's mode or group"
echo "ok: upgraded to ${version%-*}-99 with the edited config kept (0640)"

echo "== dpkg --purge"
dpkg --purge haproxy-grpc-agent
trap - EXIT
for path in /usr/bin/haproxy-grpc-agent /etc/haproxy-grpc-agent \
    /etc/systemd/system/multi-user.target.wants/haproxy-grpc-agent.service; do
    [ ! -e "$path" ] || fail "$path is left after purge"
done
echo "ok: purged; binary, config and unit link are gone"
