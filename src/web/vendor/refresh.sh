#!/usr/bin/env bash
# Fetches the vendored JavaScript players from the npm registry (`npm pack`,
# which checks the tarball against the registry's integrity hash) and copies
# their browser builds and licences here, one directory per package:
#
#   FILES...       the minified browser build(s), byte for byte as published
#   LICENSE        the package's licence
#   VERSION        the npm version vendored
#   SHA256SUMS     sha256 of every file above but itself (`sha256sum -c` format;
#                  tests/browser.rs checks the files against it)
#
#   src/web/vendor/refresh.sh                   every package, at its VERSION
#   src/web/vendor/refresh.sh hls.js 1.7.5      one package at a given version
#   src/web/vendor/refresh.sh mpegts.js latest  ... at npm's latest
#   src/web/vendor/refresh.sh --check           fetch the pinned versions again and
#                                               compare with what is here (writes nothing)
#
# Needs npm (Debian: apt-get install npm) and network access to the registry.
set -euo pipefail

cd "$(dirname "$0")"

# package|files in the tarball to vendor (besides LICENSE), space separated
PACKAGES=(
    "hls.js|dist/hls.min.js"
    "mpegts.js|dist/mpegts.js dist/mpegts.js.LICENSE.txt"
)

die() { echo "refresh.sh: $*" >&2; exit 1; }

field() { # field N "a|b": the Nth field
    local parts
    IFS='|' read -r -a parts <<<"$2"
    echo "${parts[$1]}"
}

files_of() { # the vendored file list of a package
    local p
    for p in "${PACKAGES[@]}"; do
        if [ "$(field 0 "$p")" = "$1" ]; then
            field 1 "$p"
            return 0
        fi
    done
    die "unknown package $1 (known: $(for p in "${PACKAGES[@]}"; do printf '%s ' "$(field 0 "$p")"; done))"
}

command -v npm >/dev/null 2>&1 || die "npm is not installed (apt-get install npm)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# fetch NAME VERSION DEST: unpacks NAME@VERSION and copies its files into DEST.
fetch() {
    local name="$1" version="$2" dest="$3" files f
    files="$(files_of "$name")"
    if [ "$version" = latest ]; then
        version="$(npm view "$name" version)"
    fi
    local work="$tmp/$name"
    mkdir -p "$work"
    local tarball
    tarball="$(cd "$work" && npm pack --silent "$name@$version" | tail -n 1)"
    tar -xzf "$work/$tarball" -C "$work"
    local got
    # (npm runs on node, so node is here too)
    got="$(node -p 'require(process.argv[1]).version' "$work/package/package.json")"
    [ "$got" = "$version" ] || die "$name: asked for $version, the tarball says $got"
    mkdir -p "$dest"
    rm -f "$dest"/*
    for f in $files LICENSE; do
        [ -f "$work/package/$f" ] || die "$name@$version has no $f"
        cp "$work/package/$f" "$dest/"
    done
    echo "$version" >"$dest/VERSION"
    (cd "$dest" && sha256sum -- $(for f in $files LICENSE VERSION; do basename "$f"; done) >SHA256SUMS)
    echo "$name $version:"
    sed 's/^/    /' "$dest/SHA256SUMS"
}

if [ "${1:-}" = --check ]; then
    status=0
    for p in "${PACKAGES[@]}"; do
        name="$(field 0 "$p")"
        [ -f "$name/VERSION" ] || die "$name/VERSION is missing"
        fetch "$name" "$(cat "$name/VERSION")" "$tmp/check/$name" >/dev/null
        if diff -r "$name" "$tmp/check/$name" >/dev/null; then
            echo "$name $(cat "$name/VERSION"): the vendored files are npm's"
        else
            echo "$name $(cat "$name/VERSION"): DIFFERS from npm's:" >&2
            diff -r "$name" "$tmp/check/$name" | sed -n 1,20p >&2 || true
            status=1
        fi
    done
    exit "$status"
fi

if [ $# -eq 0 ]; then
    for p in "${PACKAGES[@]}"; do
        name="$(field 0 "$p")"
        [ -f "$name/VERSION" ] || die "$name/VERSION is missing: give a version (refresh.sh $name latest)"
        fetch "$name" "$(cat "$name/VERSION")" "$name"
    done
elif [ $# -eq 2 ]; then
    fetch "$1" "$2" "$1"
else
    die "usage: refresh.sh [--check | NAME VERSION]"
fi
