#!/usr/bin/env bash
# `cargo deny` for `just lint`: licences, bans and sources always; advisories whenever the RustSec
# database can be had. It lives only on GitHub, so on a machine that cannot reach GitHub (and has
# no earlier copy under $CARGO_HOME/advisory-dbs) the advisories check is reported as skipped,
# not passed.
# ZENTRA_DENY_ADVISORIES=required makes a missing database an error.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo deny --log-level error check licenses bans sources

db_url=https://github.com/rustsec/advisory-db
copies="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 20 git ls-remote "$db_url" HEAD >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
elif compgen -G "$copies/*" >/dev/null; then
  echo "deny: $db_url is unreachable; checking advisories against the copy in $copies" >&2
  cargo deny --log-level error check --disable-fetch advisories
elif [ "${ZENTRA_DENY_ADVISORIES:-}" = required ]; then
  echo "deny: the RustSec advisory database cannot be fetched from $db_url" >&2
  exit 1
else
  echo "deny: advisories NOT checked: $db_url is unreachable from here (no copy in $copies; ZENTRA_DENY_ADVISORIES=required makes this fatal)" >&2
fi
