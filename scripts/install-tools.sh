#!/usr/bin/env bash
# Installs the real servers the tests need into the repo's ignored bin/.
# Each is built from the Go module proxy at a pinned version; a present binary
# is kept, so the second run costs nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"
export GOBIN="$bin"

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
INFLUXD_VERSION=v1.8.10
FERRETDB_VERSION=v1.24.0
NATS_SERVER_VERSION=v2.15.2
NATSCLI_VERSION=v0.5.1

want() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }
mark() { echo "$2" > "$bin/.$1.version"; }

if ! want minio "$MINIO_VERSION"; then
  echo "install-tools: building minio $MINIO_VERSION (a few minutes the first time)"
  go install "github.com/minio/minio@$MINIO_VERSION"
  mark minio "$MINIO_VERSION"
fi

if ! want influxd "$INFLUXD_VERSION"; then
  echo "install-tools: building influxd $INFLUXD_VERSION"
  go install "github.com/influxdata/influxdb/cmd/influxd@$INFLUXD_VERSION"
  mark influxd "$INFLUXD_VERSION"
fi

# nats-server runs deploy/nats-server.conf in the least-privilege tests;
# natscli is the stock client those tests attack serve with.
if ! want nats-server "$NATS_SERVER_VERSION"; then
  echo "install-tools: building nats-server $NATS_SERVER_VERSION"
  go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
  mark nats-server "$NATS_SERVER_VERSION"
fi

if ! want nats "$NATSCLI_VERSION"; then
  echo "install-tools: building natscli $NATSCLI_VERSION"
  go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
  mark nats "$NATSCLI_VERSION"
fi

if ! want ferretdb "$FERRETDB_VERSION"; then
  echo "install-tools: building ferretdb $FERRETDB_VERSION"
  tmp=$(mktemp -d)
  trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
  dir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  cp -r "$dir" "$tmp/src"
  chmod -R u+w "$tmp/src"
  echo "$FERRETDB_VERSION" > "$tmp/src/build/version/version.txt"
  (cd "$tmp/src" && go build -o "$bin/ferretdb" ./cmd/ferretdb)
  mark ferretdb "$FERRETDB_VERSION"
fi
