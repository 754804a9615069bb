#!/usr/bin/env bash
# System packages the project uses, installed from Debian's archive when run as root with apt-get.
#   data: dataset-fashion-mnist (the default data's local mirror)
#   test: the above, chromium (MLflow UI checks) and postgresql (shared Optuna storage)
# Elsewhere (not root, no apt-get) it installs nothing: the download falls back to HTTP mirrors
# and the tests that need a browser or PostgreSQL skip with a reason.
set -euo pipefail
what="${1:-data}"
packages=()
[ -d /usr/share/datasets/fashion-mnist ] || packages+=(dataset-fashion-mnist)
if [ "$what" = test ]; then
    command -v chromium >/dev/null 2>&1 || packages+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
fi
[ ${#packages[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    exit 0
fi
echo "system_deps: installing ${packages[*]} from Debian's archive" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
