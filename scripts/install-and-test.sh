#!/usr/bin/env bash
# Install everything the test suite needs (virtual display included) and run the whole suite.
# Usage: bash scripts/install-and-test.sh [extra pytest args]
# Fresh Debian + Python 3.11 is enough; run as root (or with sudo available) for the apt step.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Virtual X display + the xcb/GL libraries Qt needs (see ../shared/TESTING-NAPARI.md).
APT_PKGS="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 libxcb-icccm4 \
libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
libxcb-xfixes0 libxcb-xkb1"
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PKGS 2>/dev/null | grep -cv "install ok installed" || true)
if ! command -v xvfb-run >/dev/null || [ "${missing:-0}" != "0" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
fi

# 2. Python environment; constraints keep torch on the locally available build (no multi-GB download).
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"

# 3. Run the suite on a virtual display with napari's settings kept out of $HOME.
T=$(mktemp -d)
export NAPARI_CONFIG=$T/napari-settings.yaml XDG_CONFIG_HOME=$T/config XDG_CACHE_HOME=$T/cache \
       XDG_DATA_HOME=$T/data XDG_RUNTIME_DIR=$T/runtime MESA_SHADER_CACHE_DISABLE=true \
       NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL=error QT_API=pyqt6 PYTEST_QT_API=pyqt6 \
       MEDSAM_CACHE_DIR=$T/medsam-cache
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
unset QT_QPA_PLATFORM
set +e
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest "$@"
rc=$?
set -e
rm -rf "$T"
# pytest exits 5 when no test was collected: that must not pass as green, nor crash CI silently.
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests (exit 5): treating as a failure" >&2
  exit 1
fi
exit "$rc"
