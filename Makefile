# One entry point for people and CI. `make test` installs what it needs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test check unit binaries demo demo-loopback e2e e2e-fast e2e-cluster cluster-packages deploy-packages bench-packages bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/integration -q

# The real components (and Helm), built from their Go modules and cached outside the checkout;
# the chart tests and the end-to-end suite need them.
binaries:
	bash tests/e2e/build/build.sh >/dev/null

# The charts and the process-level stack (etcd, kube-apiserver, KEDA, HPA on loopback): no root
# once promtool (Debian's prometheus, `make deploy-packages`) is installed.
e2e-fast: $(STAMP) binaries deploy-packages
	$(PY) -m pytest tests/deploy tests/e2e --ignore=tests/e2e/cluster -v --timeout=900

# The kubelet-backed cluster on this machine with both charts installed (root; Debian packages
# installed when missing; images built into ~/.cache/keda-tenancy/images).
cluster-packages:
	bash tests/packages.sh cluster

# promtool, which runs the charts' alert rules in the chart tests.
deploy-packages:
	bash tests/packages.sh deploy

# What the benchmarks run (NGINX, valgrind); not part of `make test`.
bench-packages:
	bash tests/packages.sh bench

e2e-cluster: $(STAMP) binaries cluster-packages
	$(PY) -m pytest tests/e2e/cluster -v -s --timeout=2400 --durations=40

e2e: e2e-fast e2e-cluster

# The Go builds (compile-bound: about 25 minutes on a fresh 2-core machine; the canary
# scenario's second KEDA included) run beside the lint and unit suites, which need none of
# them, at the lowest CPU priority so those suites keep their pace; their log is printed once
# they are done. A failure of either fails the target.
PREVIOUS_KEDA := keda-previous keda-adapter-previous keda-webhooks-previous
test: $(STAMP)
	@log=$$(mktemp); builder="nice -n 19 bash tests/e2e/build/build.sh"; \
	{ $$builder && $$builder $(PREVIOUS_KEDA); } >/dev/null 2>$$log & build=$$!; \
	$(MAKE) --no-print-directory check unit; status=$$?; \
	wait $$build; built=$$?; cat $$log >&2; rm -f $$log; \
	[ $$status -eq 0 ] || exit $$status; [ $$built -eq 0 ] || { echo "build failed" >&2; exit $$built; }; \
	$(MAKE) --no-print-directory e2e

# The charts installed on the kubelet-backed cluster; Ctrl-C tears it down.
demo: $(STAMP) binaries cluster-packages
	$(PY) -m tests.demo

# The same tenants on the process-level stack (no root, no node).
demo-loopback: $(STAMP) binaries
	$(PY) -m tests.demo_loopback

bench: $(STAMP) bench-packages
	$(PY) -m bench

# Instructions per forwarded request under valgrind (deterministic, unlike requests/s on a
# shared machine); BASELINE=<git revision> compares with that revision's router; RULES=1
# also measures it with a routing rules file and prints the ratio.
.PHONY: bench-instructions
bench-instructions: $(STAMP) bench-packages
	$(PY) -m bench.instructions $(if $(BASELINE),--baseline $(BASELINE)) $(if $(RULES),--rules)

# The reloader's restart timing (burst coalescing, label-change latency); not part of `bench`.
.PHONY: bench-reloader
bench-reloader: $(STAMP)
	$(PY) -m bench.reloader

# A tenant's namespace changes against the real stack with the chart's KEDA configuration, in
# both reloader modes: failed and longest reads, HPA failure events (not part of `bench`).
.PHONY: bench-reload
bench-reload: $(STAMP) binaries
	$(PY) -m bench.reload --mode process; p=$$?; $(PY) -m bench.reload --mode deployment; d=$$?; exit $$((p || d))

# What a tenant costs on the kubelet-backed cluster (root): pods, RSS, requests, API calls
# and Lease writes at rest, open watches, namespace label latencies (not part of `bench`).
# keda-tenancy-operator-pod's own memory (VmRSS) in both modes, with a stand-in KEDA; no cluster.
.PHONY: bench-operator-pod
bench-operator-pod: $(STAMP)
	$(PY) -m bench.footprint_opod

.PHONY: bench-footprint
# LAYOUT=platform: issue 21's platform layout (the platform controller; per tenant KEDA's two pods).
bench-footprint: $(STAMP) binaries cluster-packages
	$(PY) -m bench.footprint $(if $(LAYOUT),--layout $(LAYOUT))

# 1,000 tenants simulated on the process-level stack (real etcd and kube-apiserver): the platform
# controller's memory and CPU, API requests/s at rest and in bursts of label changes, label
# change -> binding / namespace set / stand-in operator latencies (not part of `bench`).
# TENANTS=10,100 runs fewer.
TENANTS ?= 10,100,1000
.PHONY: bench-tenants
bench-tenants: $(STAMP) binaries
	$(PY) -m bench.tenants --tenants $(TENANTS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
