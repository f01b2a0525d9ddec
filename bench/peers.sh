#!/bin/sh
# Installs the bench's peers (Debian's pgloader and pgcopydb) when they are
# missing and apt can install them (root, apt-get present). Never fails: a
# peer that stays missing is skipped by the bench with a note.
# Usage: sh bench/peers.sh   (bench/peers.ts runs it once per bench)
missing=""
for p in pgloader pgcopydb; do
  command -v "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "peers:$missing missing and apt-get is not usable here (not root or no apt); skipping them" >&2
  exit 0
fi
echo "peers: installing$missing with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# One retry after refreshing the package lists (a fresh container has none).
apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 \
  || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; } \
  || echo "peers: apt-get install$missing failed; the bench skips what is missing" >&2
exit 0
