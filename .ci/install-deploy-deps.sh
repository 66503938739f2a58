#!/usr/bin/env bash
# What the deploy examples' tests need beyond the Python venv (tests/test_deploy_examples.py):
#   apt:  chromium (web example, bench --device browser), cmake + g++ + nlohmann-json3-dev (C++ example: its
#         manifest and gallery reader), libstb-dev (its PNG/JPEG decoder), fonts-dejavu-core (readable
#         screenshots), nodejs + npm (when node is missing), openssh-client + openssh-server
#         (bench --device ssh://: a loopback sshd the tests start themselves)
#   npm:  deploy_examples/web/package-lock.json (onnxruntime-web, playwright-core)
# Idempotent and quick when everything is present (no apt-get update then). It never fails
# CI: whatever cannot be installed is reported, and the tests that need it skip.
set -u
cd "$(dirname "$0")/.."
WEB=deploy_examples/web
started=$(date +%s)
say() { echo "install-deploy-deps: $*"; }

# ---- apt: only what is missing
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
[ -f /usr/include/stb/stb_image.h ] || [ -f /usr/include/stb_image.h ] || missing+=(libstb-dev)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
  fi
  if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install ${missing[*]} (no apt-get or no root): the tests that need them will skip"
  else
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO timeout 300 apt-get update -qq || say "apt-get update failed"
    # one package at a time: one that is unavailable must not block the others
    for pkg in "${missing[@]}"; do
      $SUDO timeout 600 apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || say "could not install $pkg: the tests that need it will skip"
    done
  fi
fi

# ---- npm: the web example's packages, from the lock file
if command -v npm >/dev/null 2>&1; then
  stamp="$WEB/node_modules/.package-lock.json"
  if [ -f "$stamp" ] && [ -f "$WEB/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs" ] \
     && [ -f "$WEB/node_modules/playwright-core/package.json" ] && [ ! "$WEB/package-lock.json" -nt "$stamp" ]; then
    : # up to date
  else
    say "npm ci in $WEB"
    (cd "$WEB" && timeout 600 npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) \
      || say "npm ci failed: the browser test will skip"
  fi
else
  say "npm not available: the browser test will skip"
fi

for tool in chromium cmake g++ node npm ssh; do
  command -v "$tool" >/dev/null 2>&1 || say "still missing: $tool"
done
say "done in $(( $(date +%s) - started )) s"
exit 0
