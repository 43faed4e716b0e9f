#!/usr/bin/env bash
# fp32 sgemm GFLOP/s of the BLAS libraries a Linux user can get from the package
# registries, side by side in one run, at all-MiniLM-L6-v2's shapes (bench/blas_sgemm.c
# says which). Not a test: it prints a table.
#
#   bench/blas_libraries.sh            # ROUNDS=3 by default
#
# Candidates are fetched into $BLAS_CANDIDATES (default ~/.cache/mlx-serve/blas-candidates)
# without installing anything system-wide: Debian packages with `apt-get download` +
# `dpkg -x`, PyPI wheels with `pip download` + unzip. Missing ones are skipped.
#   deb-ob    Debian libopenblas0-pthread (what main links)    deb-ob-omp  libopenblas0-openmp
#   pip-ob    PyPI scipy-openblas32 (symbols prefixed scipy_)
#   deb-blis  Debian libblis4-pthread                          deb-blis-omp  libblis4-openmp
#   pip-blis  PyPI blis (cython-blis; BLIS's typed API inside a Python extension)
#   mkl-gnu   PyPI mkl, GNU OpenMP threading   mkl-iomp  Intel OpenMP (PyPI intel-openmp)
#   mkl-seq   PyPI mkl, sequential (its 2-thread column runs 1 thread)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${BLAS_CANDIDATES:-$HOME/.cache/mlx-serve/blas-candidates}"
mkdir -p "$dir/wheels" "$dir/whl" "$dir/deb"
cd "$dir"

# Debian packages (unpacked only).
for pkg in libopenblas0-pthread libopenblas0-openmp libblis4-pthread libblis4-openmp; do
  ls deb/${pkg}_*.deb >/dev/null 2>&1 || (cd deb && apt-get download "$pkg" >/dev/null 2>&1) || echo "skip $pkg (apt-get download failed)" >&2
done
for d in deb/*.deb; do [ -e "$d" ] && dpkg -x "$d" deb-root; done
# PyPI wheels (unpacked only).
for name in scipy-openblas32 blis mkl intel-openmp; do
  ls wheels/"${name//-/_}"-*.whl >/dev/null 2>&1 || python3 -m pip download --quiet --no-deps --only-binary=:all: "$name" -d wheels >&2 || echo "skip $name (pip download failed)" >&2
done
for w in wheels/*.whl; do
  n=$(basename "$w" | cut -d- -f1)
  [ -d "whl/$n" ] || unzip -qo "$w" -d "whl/$n"
done

lib=/usr/lib/x86_64-linux-gnu
debroot=$dir/deb-root$lib
pyso=$(python3 -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")))')
cands=()
add() { [ -e "$2" ] && cands+=("$1=$2${3:+,$3}") || echo "skip $1 ($2 missing)" >&2; }
add deb-ob "$debroot/openblas-pthread/libopenblas.so.0"
add deb-ob-omp "$debroot/openblas-openmp/libopenblas.so.0"
add pip-ob "$(ls whl/scipy_openblas32/scipy_openblas32/lib/libscipy_openblas*.so 2>/dev/null | head -n1)" prefix=scipy_
add deb-blis "$debroot/blis-pthread/libblis.so.4"
add deb-blis-omp "$debroot/blis-openmp/libblis.so.4"
# cython-blis exports no CBLAS, only bli_sgemm; its extension needs libpython loaded first.
add pip-blis "$(ls whl/blis/blis/cy.*.so 2>/dev/null | head -n1)" "api=bli,preload=$pyso"
mkl=$(ls whl/mkl/mkl-*.data/data/lib/libmkl_rt.so.* 2>/dev/null | head -n1 || true)
add mkl-gnu "$mkl" env=MKL_THREADING_LAYER=GNU
iomp=$(ls whl/intel_openmp/intel_openmp-*.data/data/lib/libiomp5.so 2>/dev/null | head -n1 || true)
[ -n "$iomp" ] && add mkl-iomp "$mkl" "env=MKL_THREADING_LAYER=INTEL,preload=$iomp"
add mkl-seq "$mkl" env=MKL_THREADING_LAYER=SEQUENTIAL

cc -O2 -o "$dir/blas_sgemm" "$root/bench/blas_sgemm.c" -ldl -lpthread
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)  cores: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$dir/blas_sgemm" "${cands[@]}"
