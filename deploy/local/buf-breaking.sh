#!/usr/bin/env bash
# The contracts must not break what clients of the last tagged release (v*) were generated from:
# `buf breaking` (FILE rules, proto/buf.yaml) against that tag's proto/, read from this clone's git.
# Without a tag in the clone there is nothing released to compare with: it says so and passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
release=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || true)
if [ -z "$release" ]; then
  echo "buf breaking: no release tag (v*) in this clone; nothing to compare the contracts with"
  exit 0
fi
(cd proto && buf breaking --against "../.git#tag=$release,subdir=proto")
echo "buf breaking: the contracts keep every promise of $release"
