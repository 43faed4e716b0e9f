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

.PHONY: all build install uninstall

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
