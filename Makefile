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

build:
	cd services && go build -o $(BIN)/backstream ./cmd/backstream

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

# Runs every fuzz target for FUZZTIME (go fuzzes one target per package per
# invocation). Their committed corpora (testdata/fuzz) also run with the
# plain tests above. docs/checks.md says what each target holds.
FUZZTIME     ?= 10s
FUZZPARALLEL ?= 1
FUZZ := events:FuzzDecode events:FuzzPayload \
	pkg/plan:FuzzParse pkg/plan:FuzzFromJSON \
	pkg/format:FuzzReader pkg/format:FuzzReaderForged pkg/format:FuzzSealOpen \
	pkg/format:FuzzManifest pkg/format:FuzzParseKey
fuzz:
	@for t in $(FUZZ); do \
		echo "== fuzz $${t#*:} ($${t%%:*}, $(FUZZTIME))"; \
		(cd $${t%%:*} && go test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) \
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

clean:
	rm -rf $(BIN) data
