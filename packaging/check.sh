#!/usr/bin/env bash
# Checks the packages packaging/build.sh made: lintian, contents (files, modes, conffiles,
# dependencies), the packaged binary run from an extracted root (--version,
# --check-config against the packaged config), and the systemd unit
# (systemd-analyze verify; the security score is printed). Any failure fails the run.
# On a fresh machine it installs lintian and rpm (as root, with apt).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v rpm >/dev/null 2>&1 || missing+=(rpm)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v man >/dev/null 2>&1 || missing+=(man-db)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
        echo "error: missing ${missing[*]}; install them and run again" >&2
        exit 1
    fi
fi

deb=$(ls target/packages/*.deb)
rpm=$(ls target/packages/*.rpm)
fail() { echo "error: $*" >&2; exit 1; }

echo "== lintian $deb"
# Errors and warnings fail; every override is in packaging/debian/lintian-overrides with
# its reason. (lintian refuses to run as root without --allow-root.)
lintian --allow-root --fail-on error,warning --info "$deb"

echo "== .deb contents"
dpkg-deb --info "$deb"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
expect_deb() { # mode path
    grep -qE "^$1 (root/root|0/0) .* \./($2)\$" <<<"$contents" || fail ".deb lacks $1 $2"
}
expect_deb -rwxr-xr-x usr/bin/haproxy-grpc-agent
expect_deb -rw-r--r-- etc/haproxy-grpc-agent/config.toml
expect_deb -rw-r--r-- 'usr/lib/systemd/system/haproxy-grpc-agent.service|lib/systemd/system/haproxy-grpc-agent.service'
expect_deb -rw-r--r-- usr/share/man/man1/haproxy-grpc-agent.1.gz
expect_deb -rw-r--r-- usr/share/bash-completion/completions/haproxy-grpc-agent
expect_deb -rw-r--r-- usr/share/zsh/vendor-completions/_haproxy-grpc-agent
expect_deb -rw-r--r-- usr/share/fish/vendor_completions.d/haproxy-grpc-agent.fish
expect_deb -rw-r--r-- usr/share/doc/haproxy-grpc-agent/copyright
expect_deb -rw-r--r-- usr/share/doc/haproxy-grpc-agent/changelog.Debian.gz
# (Lists are read whole before grep -q looks at them: with pipefail, a writer cut off by
# grep's early exit would fail the check at random.)
depends=$(dpkg-deb --field "$deb" Depends)
grep -q adduser <<<"$depends" || fail ".deb does not depend on adduser"
control=$(mktemp -d)
dpkg-deb --control "$deb" "$control"
grep -qx /etc/haproxy-grpc-agent/config.toml "$control/conffiles" || fail "config.toml is not a conffile"
for script in postinst prerm postrm; do
    [ -x "$control/$script" ] || fail ".deb has no $script"
done
grep -q "deb-systemd-helper enable" "$control/postinst" || fail "postinst does not enable the unit"
rm -rf "$control"

echo "== .rpm contents"
rpm -qip "$rpm"
rpm -qlvp "$rpm"
rpm -qp --requires "$rpm"
rpm -qp --scripts "$rpm"
rpm_config=$(rpm -qcp "$rpm")
grep -qx /etc/haproxy-grpc-agent/config.toml <<<"$rpm_config" || fail "config.toml is not %config in the .rpm"
rpm_files=$(rpm -qlp "$rpm")
for path in /usr/bin/haproxy-grpc-agent /usr/lib/systemd/system/haproxy-grpc-agent.service \
    /usr/share/man/man1/haproxy-grpc-agent.1.gz /usr/share/bash-completion/completions/haproxy-grpc-agent \
    /usr/share/zsh/site-functions/_haproxy-grpc-agent /usr/share/fish/vendor_completions.d/haproxy-grpc-agent.fish; do
    grep -qx "$path" <<<"$rpm_files" || fail ".rpm lacks $path"
done

echo "== packaged binary, from extracted roots"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb --extract "$deb" "$root/deb"
mkdir -p "$root/rpm"
# rpm2cpio (rpm 4.18) exits 1 on these zstd payloads although the archive is whole; the
# digests are checked here and every extracted file is used below.
rpm -K --nosignature "$rpm"
rpm2cpio "$rpm" >"$root/rpm.cpio" || true
(cd "$root/rpm" && cpio -idm --quiet <"$root/rpm.cpio")
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
for tree in "$root/deb" "$root/rpm"; do
    bin="$tree/usr/bin/haproxy-grpc-agent"
    size=$(stat -c %s "$bin")
    [ "$size" -lt 20000000 ] || fail "$bin is $size bytes (limit 20 MB)"
    [ "$("$bin" --version)" = "haproxy-grpc-agent $version" ] || fail "$bin --version"
    env -u HAPROXY_AGENT_CONFIG "$bin" --config "$tree/etc/haproxy-grpc-agent/config.toml" --check-config >/dev/null \
        || fail "$bin --check-config rejects the packaged config"
    echo "ok: $bin ($size bytes) runs and accepts the packaged config"
done

echo "== systemd unit"
unit="$root/deb/usr/lib/systemd/system/haproxy-grpc-agent.service"
[ -f "$unit" ] || unit="$root/deb/lib/systemd/system/haproxy-grpc-agent.service"
# Verified on this machine with the packaged binary and man page in place of the
# installed ones (so ExecStart= and Documentation=man: resolve).
mkdir -p "$root/unit"
sed "s|/usr/bin/haproxy-grpc-agent|$root/deb/usr/bin/haproxy-grpc-agent|g" "$unit" \
    >"$root/unit/haproxy-grpc-agent.service"
MANPATH="$root/deb/usr/share/man" systemd-analyze verify "$root/unit/haproxy-grpc-agent.service"
echo "ok: systemd-analyze verify"
systemd-analyze security --offline=true "$root/unit/haproxy-grpc-agent.service" | tail -n 1
