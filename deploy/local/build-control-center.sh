#!/usr/bin/env bash
# Builds the control center into control-center/dist, which the gateway serves: the release wasm
# (size-optimised profile), its JS glue from wasm-bindgen, wasm-opt -Oz, then the page and styles.
# Prints the bundle's size. Everything it runs was installed by `install-tools.sh wasm`.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/local/env.sh
source deploy/local/env.sh

target_dir=${CARGO_TARGET_DIR:-target}
cargo build -p zentra-control-center --target wasm32-unknown-unknown --profile wasm-release
wasm="$target_dir/wasm32-unknown-unknown/wasm-release/zentra-control-center.wasm"
dist=control-center/dist
rm -rf "$dist"
mkdir -p "$dist/pkg"
wasm-bindgen --target web --no-typescript --out-name zentra_control_center --out-dir "$dist/pkg" "$wasm"
bundle="$dist/pkg/zentra_control_center_bg.wasm"
before=$(wc -c <"$bundle")
wasm-opt -Oz "$bundle" -o "$bundle.opt"
mv "$bundle.opt" "$bundle"
cp control-center/index.html control-center/style.css "$dist/"
after=$(wc -c <"$bundle")
gzipped=$(gzip -9c "$bundle" | wc -c)
printf 'control center: %s/pkg: wasm %d KB (%d KB before wasm-opt, %d KB gzipped)\n' \
  "$dist" $((after / 1024)) $((before / 1024)) $((gzipped / 1024))
