#!/usr/bin/env bash
# Packs what a GPU run of bench/gpu/run_checks.sh needs into transfers of at most
# TRANSFER_MIB each (the device machine takes 64 MiB per call, the checkout included):
#   bench/gpu/pack.sh [--cpu] [OUT_DIR]          OUT_DIR default .gpu (git-ignored)
# Rerun it after any change to the worker or supervisor: the bundle holds their binaries.
# Needs `scripts/setup --cuda` (or, with --cpu, `scripts/setup`: a CPU bundle to test the
# run script here). Writes OUT_DIR/t1, t2, ... each with a MANIFEST of every file
# (sha256, bytes, transfer, name):
#   prefix.tar.xz.NN       `make install-cuda` layout (stripped binaries, include/, .libs/)
#                          without libmlx.so and without the `nvidia` link (made there)
#   all-MiniLM-L6-v2.tar.xz.NN  MiniLM with float16 weights (sentence-transformers' files)
#   libmlx.so.xz.NN        libmlx.so, xz -9e
# Each file is cut into parts NN = 00, 01, ... that fill the transfers in turn (run_checks.sh
# joins them). The fixture models and the scripts travel with the checkout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MODE=cuda
[ "${1:-}" = "--cpu" ] && { MODE=cpu; shift; }
OUT=$(realpath -m "${1:-.gpu}")
# The device takes 64 MiB a call, the checkout (tracked and untracked files git does not
# ignore: 28 MiB on disk on 2026-12-07, mostly fixtures) included: a transfer gets what is left,
# less 2 MiB. The device counted more than the files' bytes: with 1 MiB and their bytes
# (25.7 MiB + 38 MiB) it refused the call.
checkout_kib=$(git ls-files -co --exclude-standard -z | du -c --files0-from=- | tail -1 | cut -f1)
TRANSFER_MIB=${TRANSFER_MIB:-$((62 - (checkout_kib + 1023) / 1024))}
die() { echo "pack: $*" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
echo "== make install ($MODE) into a staging prefix"
if [ "$MODE" = cuda ]; then
  make -s install-cuda NO_BUILD=1 PREFIX="$stage/prefix" >/dev/null
else
  make -s install NO_BUILD=1 PREFIX="$stage/prefix" >/dev/null
fi
strip --strip-unneeded "$stage/prefix/bin/mlx-serve" "$stage/prefix/bin/mlx-serve-worker"
lib=$stage/prefix/lib/mlx-serve/mlx/lib/libmlx.so
libsha=$(sha256sum "$lib" | cut -d' ' -f1)
mkdir -p "$stage/files"
# xz -9e of the CUDA libmlx.so takes minutes: keep the result, keyed by the library's hash.
xzcache=$ROOT/.deps/libmlx-${libsha:0:16}.so.xz
if [ ! -s "$xzcache" ]; then
  echo "== libmlx.so ($(du -h "$lib" | cut -f1)): xz -9e"
  xz -T2 -9e -c "$lib" > "$xzcache.tmp" && mv "$xzcache.tmp" "$xzcache"
fi
cp "$xzcache" "$stage/libmlx.so.xz"
rm "$lib"
tar -C "$stage/prefix" -cJf "$stage/files/prefix.tar.xz" .

echo "== all-MiniLM-L6-v2 with float16 weights"
minilm=$stage/all-MiniLM-L6-v2
mkdir -p "$minilm"
src=.deps/all-MiniLM-L6-v2
[ -f "$src/model.safetensors" ] || die "$src is missing: run scripts/setup"
for f in config.json config_sentence_transformers.json modules.json sentence_bert_config.json \
         special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt 1_Pooling; do
  cp -rL "$src/$f" "$minilm/"
done
"$ROOT/.deps/venv/bin/python" - "$src/model.safetensors" "$minilm/model.safetensors" <<'PY'
# float32 -> float16 safetensors with numpy alone (format: u64 header size, JSON header, data).
import json, struct, sys
import numpy as np
src, dst = sys.argv[1:]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
out_header, chunks, offset = {}, [], 0
for name, meta in header.items():
    if name == "__metadata__":
        out_header[name] = meta
        continue
    a, b = meta["data_offsets"]
    arr = np.frombuffer(data[a:b], dtype=np.float32) if meta["dtype"] == "F32" else None
    blob = arr.astype(np.float16).tobytes() if arr is not None else data[a:b]
    out_header[name] = {"dtype": "F16" if arr is not None else meta["dtype"], "shape": meta["shape"],
                        "data_offsets": [offset, offset + len(blob)]}
    chunks.append(blob)
    offset += len(blob)
head = json.dumps(out_header, separators=(",", ":")).encode()
head += b" " * (-len(head) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"".join(chunks))
PY
tar -C "$stage" -cJf "$stage/files/all-MiniLM-L6-v2.tar.xz" all-MiniLM-L6-v2

echo "== transfers of at most $TRANSFER_MIB MiB"
rm -rf "$OUT" && mkdir -p "$OUT"
budget=$((TRANSFER_MIB * 1024 * 1024))
manifest=$stage/MANIFEST
: > "$manifest"
declare -a used=()
t=1
# put_parts FILE NAME: cuts FILE into parts NAME.00, NAME.01, ... that fill the transfers in
# turn from the current one, and lists them in the MANIFEST.
put_parts() {
  local src=$1 name=$2 total offset=0 part=0 size room pname
  total=$(stat -c %s "$src")
  while [ "$offset" -lt "$total" ]; do
    [ -z "${used[$t]:-}" ] && used[$t]=0
    room=$((budget - used[t]))
    if [ "$room" -le $((1024 * 1024)) ]; then t=$((t + 1)); continue; fi
    size=$(( total - offset < room ? total - offset : room ))
    pname=$(printf '%s.%02d' "$name" "$part")
    mkdir -p "$OUT/t$t"
    dd if="$src" of="$OUT/t$t/$pname" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$size" status=none
    echo "$(sha256sum "$OUT/t$t/$pname" | cut -d' ' -f1) $size t$t $pname" >> "$manifest"
    used[$t]=$((used[t] + size))
    offset=$((offset + size)) part=$((part + 1))
  done
}
put_parts "$stage/files/prefix.tar.xz" prefix.tar.xz
put_parts "$stage/files/all-MiniLM-L6-v2.tar.xz" all-MiniLM-L6-v2.tar.xz
put_parts "$stage/libmlx.so.xz" libmlx.so.xz
echo "$libsha 0 - libmlx.so" >> "$manifest"
echo "$MODE 0 - mode" >> "$manifest"
for d in "$OUT"/t*; do cp "$manifest" "$d/MANIFEST"; done
cat "$manifest"
du -sh "$OUT"/t*
