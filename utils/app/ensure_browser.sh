#!/bin/sh
# Headless Chromium and its driver for the browser test (tests/test_app.py); `make test` runs this first.
# Installed with apt-get when missing and we are root (Debian/Ubuntu; the package lists are fetched if the
# first try fails); otherwise one line says the browser test will be skipped and how to install them.
# Never fails the build: the test itself says why it skips.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
packages="chromium chromium-driver"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $packages for the browser test (tests/test_app.py) ..."
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q $packages >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $packages >/dev/null 2>&1; }; then
        command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
    fi
    echo "note: apt-get could not install $packages; tests/test_app.py will be skipped (try: apt-get update && apt-get install -y $packages)"
    exit 0
fi
echo "note: chromium/chromedriver not found; tests/test_app.py will be skipped (install as root: apt-get install -y $packages)"
exit 0
