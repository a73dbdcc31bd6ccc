# Paddock: the two Quick-start commands are `make demo` and `make test`.
# `make demo DEMO_ARGS="--episodes 128 --concurrency 32"` passes options to scripts/demo.sh.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)

.PHONY: all deps configure build build-demo test demo train-demo bench clean
# The programs `make demo` runs; `make test` builds everything else too
# (tests, benches, fuzz targets).
DEMO_TARGETS = paddockd paddock paddock-init paddock-policy

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

build-demo: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target $(DEMO_TARGETS)

test:
	@bash scripts/install-deps.sh --train
	@$(MAKE) --no-print-directory build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 600 -j 1

demo: build-demo
	@bash scripts/demo.sh $(BUILD_DIR) $(DEMO_ARGS)

# SFT + GRPO of the embedded model on the demo's tasks (docs/training.md); the weights
# it leaves in $(BUILD_DIR)/train-demo/weights/ are what `make demo` serves next.
# `make train-demo TRAIN_ARGS="--sft-steps 100"` passes options to train_demo.py.
train-demo: build-demo
	@bash scripts/install-deps.sh --train
	OMP_NUM_THREADS=1 /usr/bin/python3 examples/train/train_demo.py --build $(BUILD_DIR) $(TRAIN_ARGS)

bench:
	@bash scripts/install-deps.sh --bench
	@$(MAKE) --no-print-directory build
	$(BUILD_DIR)/bench/sandbox_bench --out bench/results

clean:
	rm -rf $(BUILD_DIR)
