#!/usr/bin/env bash
# `make run`: start backstream on its embedded defaults (NATS on 127.0.0.1:4250,
# store in ./data/nats, API on 127.0.0.1:4251), apply the demo plan from
# examples/ and run one backup of it, then keep serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/backstream
mkdir -p data/backups
cat <<'MSG'
== backstream demo ==========================================================
Starting `backstream serve` with examples/demo.yaml and one backup of it.
The demo plan tars the examples/ directory, compresses it with zstd and stores
it in ./data/backups, then reads it back to verify it.

Once the run below says "backup succeeded", try in a second terminal:
  bin/backstream trigger demo --wait          # another backup, followed live
  bin/backstream runs                         # every run with phase and size
  bin/backstream run <RUN-ID>                 # one run's steps
  bin/backstream backups --fs data/backups    # what the storage holds (no NATS)
  bin/backstream restore demo/latest --fs data/backups --to /tmp/demo.tar
Stop with Ctrl-C.
=============================================================================
MSG
exec "$bin" serve --data ./data --apply examples/demo.yaml --trigger demo --log-level warn
