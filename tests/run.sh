#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (nginx, Chromium and its
# driver, fonts for CJK and emoji, redis-server), then runs every test. A test never skips for a
# missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages+=(nginx)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || packages+=(redis-server)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || packages+=(fonts-noto-cjk)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || packages+=(fonts-noto-color-emoji)
if [ ${#packages[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
export PATH="$PATH:/usr/sbin"

cargo test --locked --all-targets
