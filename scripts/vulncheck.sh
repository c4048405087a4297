#!/usr/bin/env bash
# Runs govulncheck on every module against the Go vulnerability database,
# built offline from the golang.org/x/vulndb module. Machines that reach the
# Go module proxy but not vuln.go.dev (like the one this was written on) can
# still check: the module carries every OSV entry under data/osv, and its own
# cmd/indexdb writes the v1 layout `govulncheck -db file://DIR` reads.
#
# Fails (exit 3, govulncheck's code) when code calls a vulnerable symbol;
# vulnerabilities in modules or packages that are required but not called are
# listed, not fatal. VULNDB_VERSION pins the database (default: the proxy's
# latest, so a new advisory is seen the day it is published).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"

GOVULNCHECK_VERSION=v1.9.0
VULNDB_VERSION=${VULNDB_VERSION:-latest}
MODULES=${MODULES:-events pkg services integration}

if ! [ -x "$bin/govulncheck" ] || [ "$(cat "$bin/.govulncheck.version" 2>/dev/null)" != "$GOVULNCHECK_VERSION" ]; then
  echo "vulncheck: installing govulncheck $GOVULNCHECK_VERSION"
  GOBIN="$bin" go install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"
  echo "$GOVULNCHECK_VERSION" > "$bin/.govulncheck.version"
fi

# Outside the workspace, so go.work does not take part.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
info=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION")
version=$(sed -n 's/^\s*"Version": "\(.*\)",$/\1/p' <<<"$info")
src=$(sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p' <<<"$info")
db="$bin/vulndb/$version"
if ! [ -f "$db/index/db.json" ]; then
  echo "vulncheck: indexing golang.org/x/vulndb@$version ($(ls "$src/data/osv" | wc -l) entries; a minute the first time)"
  rm -rf "$bin/vulndb"
  mkdir -p "$bin/vulndb"
  (cd "$tmp" && GOFLAGS=-mod=mod go run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$src/data/osv" -out "$db.tmp")
  mv "$db.tmp" "$db"
fi
# The pseudo-version's timestamp is the database's date (indexdb leaves
# index/db.json's "modified" at zero).
echo "vulncheck: database golang.org/x/vulndb@$version; $(go version)"

rc=0
for m in $MODULES; do
  echo "== govulncheck $m"
  (cd "$root/$m" && "$bin/govulncheck" -db "file://$db" ./...) || rc=$?
done
exit $rc
