# Build and install mlx-serve on Linux (macOS: use the Homebrew formula, docs/install.md).
#
#   make                                   # cargo build --release (after scripts/setup)
#   sudo make install                      # PREFIX=/usr/local
#   make install PREFIX=$HOME/.local       # no root
#   make install NO_BUILD=1 PREFIX=...     # install what target/release already holds
#   make uninstall PREFIX=...
#
# Layout (relocatable: nothing refers to this checkout, the prefix can be moved):
#   $(PREFIX)/bin/mlx-serve, $(PREFIX)/bin/mlx-serve-worker
#   $(PREFIX)/lib/mlx-serve/mlx/lib/libmlx.so    the pinned MLX CPU runtime (.deps/mlx-cpu)
#   $(PREFIX)/lib/mlx-serve/mlx_cpu.libs/        its BLAS/LAPACK/gfortran; libmlx.so finds them
#                                                 through its own RPATH $ORIGIN/../../mlx_cpu.libs
#   $(PREFIX)/share/doc/mlx-serve/               MLX's license files
# The worker finds libmlx.so through its RUNPATH $ORIGIN/../lib/mlx-serve/mlx/lib
# (worker/build.rs). A cargo build also carries the absolute path of .deps/mlx-cpu so it
# runs from target/; install rewrites the RUNPATH to the $ORIGIN entry alone (patchelf),
# so an installed worker can never load the checkout's MLX.
# OpenBLAS stays a system library (apt-get install libopenblas0-pthread): the worker links
# it first so fp32 matmul uses it instead of the reference BLAS bundled with MLX.
#
# The CUDA build (scripts/setup --cuda; docs/install.md "Linux with an NVIDIA GPU"):
#   make install-cuda PREFIX=... [NVIDIA_LIBS=<site-packages>/nvidia] [NO_BUILD=1]
# Layout: the same bin/, and under lib/mlx-serve/
#   mlx/lib/libmlx.so         MLX built for CUDA 13 (.deps/mlx-cuda, PyPI mlx-cuda-13)
#   mlx/include/              MLX's headers and CCCL: NVRTC compiles kernels with them at
#                             run time (without them every model load fails)
#   mlx_cuda_13.libs/         its bundled BLAS/LAPACK/gfortran (RPATH $ORIGIN/../../mlx_cuda_13.libs)
#   nvidia -> NVIDIA_LIBS     when given: the CUDA 13 libraries (cu13, cudnn, nccl, ...) of a
#                             Python environment with NVIDIA's wheels, where libmlx's RPATH
#                             $ORIGIN/../../nvidia/<lib>/lib looks; else they must be on the
#                             system's loader path
# The worker's RUNPATH: $ORIGIN/../lib/mlx-serve/mlx/lib and .../mlx_cuda_13.libs.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
LIBDIR = $(DESTDIR)$(PREFIX)/lib/mlx-serve
DOCDIR = $(DESTDIR)$(PREFIX)/share/doc/mlx-serve
CARGO ?= cargo
TARGET_DIR ?= target/release
MLX_RUNTIME ?= .deps/mlx-cpu
WORKER_RUNPATH = $$ORIGIN/../lib/mlx-serve/mlx/lib
PATCHELF ?= patchelf

CUDA_RUNTIME ?= .deps/mlx-cuda
CUDA_WORKER_DIR ?= target-cuda/release
CUDA_WORKER_RUNPATH = $(WORKER_RUNPATH):$$ORIGIN/../lib/mlx-serve/mlx_cuda_13.libs
NVIDIA_LIBS ?=

.PHONY: all build install uninstall build-cuda install-cuda

all: build

build:
	$(CARGO) build --release --locked -p mlx-serve -p mlx-serve-worker

install: $(if $(NO_BUILD),,build)
	@test -f $(MLX_RUNTIME)/mlx/lib/libmlx.so || { echo "$(MLX_RUNTIME) has no MLX runtime: run scripts/setup" >&2; exit 1; }
	@command -v $(PATCHELF) >/dev/null || { echo "patchelf is missing: apt-get install patchelf" >&2; exit 1; }
	install -d $(BINDIR) $(LIBDIR)/mlx/lib $(LIBDIR)/mlx_cpu.libs $(DOCDIR)
	install -m 0755 $(TARGET_DIR)/mlx-serve $(BINDIR)/mlx-serve
	install -m 0755 $(TARGET_DIR)/mlx-serve-worker $(BINDIR)/mlx-serve-worker.tmp
	$(PATCHELF) --set-rpath '$(WORKER_RUNPATH)' $(BINDIR)/mlx-serve-worker.tmp
	mv -f $(BINDIR)/mlx-serve-worker.tmp $(BINDIR)/mlx-serve-worker
	install -m 0644 $(MLX_RUNTIME)/mlx/lib/libmlx.so $(LIBDIR)/mlx/lib/libmlx.so
	install -m 0644 $(MLX_RUNTIME)/mlx_cpu.libs/* $(LIBDIR)/mlx_cpu.libs/
	install -m 0644 $(MLX_RUNTIME)/mlx_cpu-*.dist-info/licenses/* $(DOCDIR)/ 2>/dev/null || true

uninstall:
	rm -f $(BINDIR)/mlx-serve $(BINDIR)/mlx-serve-worker
	rm -rf $(LIBDIR) $(DOCDIR)

build-cuda:
	scripts/setup --cuda

install-cuda: $(if $(NO_BUILD),,build-cuda)
	@test -f $(CUDA_RUNTIME)/mlx/lib/libmlx.so || { echo "$(CUDA_RUNTIME) has no MLX CUDA runtime: run scripts/setup --cuda" >&2; exit 1; }
	@test -x $(CUDA_WORKER_DIR)/mlx-serve-worker || { echo "$(CUDA_WORKER_DIR)/mlx-serve-worker is missing: run scripts/setup --cuda" >&2; exit 1; }
	@command -v $(PATCHELF) >/dev/null || { echo "patchelf is missing: apt-get install patchelf" >&2; exit 1; }
	install -d $(BINDIR) $(LIBDIR)/mlx/lib $(LIBDIR)/mlx_cuda_13.libs $(DOCDIR)
	install -m 0755 $(TARGET_DIR)/mlx-serve $(BINDIR)/mlx-serve
	install -m 0755 $(CUDA_WORKER_DIR)/mlx-serve-worker $(BINDIR)/mlx-serve-worker.tmp
	$(PATCHELF) --set-rpath '$(CUDA_WORKER_RUNPATH)' $(BINDIR)/mlx-serve-worker.tmp
	mv -f $(BINDIR)/mlx-serve-worker.tmp $(BINDIR)/mlx-serve-worker
	install -m 0644 $(CUDA_RUNTIME)/mlx/lib/libmlx.so $(LIBDIR)/mlx/lib/libmlx.so
	rm -rf $(LIBDIR)/mlx/include
	cp -R $(CUDA_RUNTIME)/mlx/include $(LIBDIR)/mlx/include
	install -m 0644 $(CUDA_RUNTIME)/mlx_cuda_13.libs/* $(LIBDIR)/mlx_cuda_13.libs/
	install -m 0644 $(CUDA_RUNTIME)/mlx_cuda_13-*.dist-info/licenses/* $(DOCDIR)/ 2>/dev/null || true
	$(if $(NVIDIA_LIBS),ln -sfn $(NVIDIA_LIBS) $(LIBDIR)/nvidia)
