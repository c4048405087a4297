#!/usr/bin/env bash
# Installs the peer backup tools `make bench-peers` measures against into the
# repo's ignored bin/ — separate from install-tools.sh so `make test` never
# pays for them. restic, kopia and age are built from the Go module proxy at
# pinned versions; zstd comes from Debian's packages. A present binary of the
# pinned version is kept, so the second run costs nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"
export GOBIN="$bin"

# restic 0.18.x is what issue #16 measured. kopia 0.23.x was measured there
# too, but the module proxy refuses v0.23.0 (403, "not available"); v0.22.3 is
# the nearest version it serves.
RESTIC_VERSION=v0.18.1
KOPIA_VERSION=v0.22.3
AGE_VERSION=v1.3.2

want() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }
mark() { echo "$2" > "$bin/.$1.version"; }

if ! want restic "$RESTIC_VERSION"; then
  echo "install-peers: building restic $RESTIC_VERSION"
  go install "github.com/restic/restic/cmd/restic@$RESTIC_VERSION"
  mark restic "$RESTIC_VERSION"
fi

# `go install kopia@version` fails here: it asks the proxy for the module's
# version list (for deprecation notices), which the proxy refuses for kopia.
# The version itself downloads, so it is built from its module directory.
if ! want kopia "$KOPIA_VERSION"; then
  echo "install-peers: building kopia $KOPIA_VERSION (a few minutes the first time)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "github.com/kopia/kopia@$KOPIA_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  (cd "$dir" && go build -o "$bin/kopia" .)
  mark kopia "$KOPIA_VERSION"
fi

if ! want age "$AGE_VERSION"; then
  echo "install-peers: building age $AGE_VERSION"
  go install "filippo.io/age/cmd/age@$AGE_VERSION" "filippo.io/age/cmd/age-keygen@$AGE_VERSION"
  mark age "$AGE_VERSION"
fi

# The baseline's compressor is the distribution's zstd CLI, as a user would
# have it.
if ! command -v zstd >/dev/null; then
  echo "install-peers: installing zstd from Debian's packages"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y zstd >/dev/null || { apt-get update >/dev/null && apt-get install -y zstd >/dev/null; }
  else
    echo "install-peers: zstd is missing and this is not root: apt-get install zstd" >&2
    exit 1
  fi
fi
