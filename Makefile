# backstream — the README's two commands are `make run` and `make test`.
MODULES := events pkg services integration
BIN     := $(CURDIR)/bin
GOTEST  ?= go test -count=1 -timeout 40m

# The Go release every build and test uses: go1.26.8 has 11 standard-library
# vulnerabilities our code reaches (make vuln, docs/checks.md), fixed in
# go1.26.10. The go command fetches it from the module proxy once.
export GOTOOLCHAIN := go1.26.10

.PHONY: all build run test tools vet lint bench clean fuzz race vuln

all: build

# The version `backstream version` prints: the nearest tag and commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build:
	cd services && go build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/backstream ./cmd/backstream

# Starts backstream on its embedded defaults with the demo plan and runs one backup.
run: build
	./scripts/run-demo.sh

# Installs the servers the tests need into bin/ (cached), then tests every module.
test: tools vet
	@for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && $(GOTEST) ./...) || exit 1; \
	done
	@$(MAKE) --no-print-directory fuzz race vuln

# Runs every fuzz target for a bounded number of executions (go fuzzes one
# target per package per invocation). A count, not a duration: a -fuzztime
# duration can fail a target with a bare "context deadline exceeded" when the
# deadline races a busy worker (golang/go#75804, fixed only in go1.27); seen
# in CI here. Each target's count is sized to a few seconds on 2 busy cores
# (FuzzSealOpen seals and opens whole objects, so it runs fewer). FUZZSCALE
# multiplies every count; FUZZTIME=2m (a duration) runs each that long instead.
# Their committed corpora (testdata/fuzz) also run with the plain tests above.
# docs/checks.md says what each target holds.
FUZZSCALE    ?= 2
FUZZTIME     ?=
FUZZPARALLEL ?= 1
FUZZ := events:FuzzDecode:20000 events:FuzzPayload:20000 \
	pkg/plan:FuzzParse:20000 pkg/plan:FuzzFromJSON:20000 \
	pkg/format:FuzzReader:50000 pkg/format:FuzzReaderForged:20000 pkg/format:FuzzSealOpen:3000 \
	pkg/format:FuzzManifest:20000 pkg/format:FuzzParseKey:20000
fuzz:
	@for t in $(FUZZ); do \
		dir=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$${rest#*:}; \
		budget="$(FUZZTIME)"; [ -n "$$budget" ] || budget=$$((n * $(FUZZSCALE)))x; \
		echo "== fuzz $$name ($$dir, $$budget)"; \
		(cd $$dir && go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $$budget \
			-fuzzminimizetime 2s -parallel $(FUZZPARALLEL) .) || exit 1; \
	done

# The race detector on pkg and services, where the goroutines are (bus,
# writer pool, scheduler, redaction streams, child processes, multipart
# uploads, stages); all of it, so a package that starts goroutines later is
# covered too. -short skips only pkg/format's 50 MiB object. integration/ is
# left out: its end-to-end runs take minutes without the detector.
race:
	cd pkg && go test -count=1 -race -short -timeout 15m ./...
	cd services && go test -count=1 -race -short -timeout 15m ./...

# govulncheck on every module, against a database built from the
# golang.org/x/vulndb module (vuln.go.dev need not be reachable).
vuln:
	./scripts/vulncheck.sh

tools:
	GOTOOLCHAIN=local ./scripts/install-tools.sh
	./scripts/install-apt.sh

vet:
	@for m in $(MODULES); do (cd $$m && go vet ./...) || exit 1; done

lint: vet
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Benchmarks print figures; SIZE is the generated data set (e.g. SIZE=1GiB).
SIZE ?= 1GiB
bench: tools build
	cd integration && go run ./cmd/bench --size $(SIZE)

# The peer backup tools bench-peers measures against (restic, kopia, age, zstd);
# kept out of `tools` so `make test` never builds them.
.PHONY: peers-tools bench-peers
peers-tools:
	./scripts/install-peers.sh

# backstream side by side with restic, kopia and `zstd -1 | age | upload`
# (docs/bench.md, "Against peers"). ROUNDS interleaved rounds; SETS of
# gen,pgbench,mariadb,tar.
ROUNDS ?= 3
SETS ?= gen,pgbench,mariadb,tar
bench-peers: tools peers-tools build
	cd integration && go run ./cmd/bench peers --size $(SIZE) --rounds $(ROUNDS) --sets $(SETS)

clean:
	rm -rf $(BIN) data
