#!/usr/bin/env bash
# Builds the .deb and the .rpm into target/packages/ (exactly one of each).
# On a fresh machine it installs what it needs: cargo-deb and cargo-generate-rpm from
# crates.io, and (as root, with apt) Debian's dpkg-dev. Usage: packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

need_cargo_tool() {
    local tool=$1 crate=$2 version=$3
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "== installing $crate $version"
        cargo install --locked "$crate" --version "$version"
    fi
}
need_cargo_tool deb cargo-deb "$CARGO_DEB_VERSION"
need_cargo_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
if ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing dpkg-dev (dpkg-shlibdeps works out the .deb's library dependencies)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q dpkg-dev
    else
        echo "error: dpkg-shlibdeps is missing; install dpkg-dev and run again" >&2
        exit 1
    fi
fi

echo "== release build"
cargo build --release --locked

echo "== man page, completions (generated from the command-line definition)"
assets=target/package-assets
rm -rf "$assets"
cargo run --locked --quiet --example package_assets -- "$assets"
gzip -9n --force "$assets"/*.1

echo "== packages"
out=target/packages
rm -rf "$out"
mkdir -p "$out"
cargo deb --no-build --locked --output "$out/"
cargo generate-rpm --output "$out/"

debs=("$out"/*.deb)
rpms=("$out"/*.rpm)
if [ "${#debs[@]}" -ne 1 ] || [ "${#rpms[@]}" -ne 1 ]; then
    echo "error: expected one .deb and one .rpm in $out, found: $(ls "$out")" >&2
    exit 1
fi
ls -l "$out"
