# backstream — the README's two commands are `make run` and `make test`.
MODULES := events pkg services integration
BIN     := $(CURDIR)/bin
GOTEST  ?= go test -count=1 -timeout 40m

.PHONY: all build run test tools vet lint bench clean

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

tools:
	./scripts/install-tools.sh
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
