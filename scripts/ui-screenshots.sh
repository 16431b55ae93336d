#!/usr/bin/env bash
# Regenerates the dashboard's screenshots in docs/images/ (shown in docs/observability.md) by
# running its end-to-end test in headless Chromium with KAPPA_UI_SCREENSHOTS set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
KAPPA_UI_SCREENSHOTS="$PWD/docs/images" \
  cargo nextest run -p kappa --test system -E 'test(dashboard_in_headless_chromium)'
ls -l docs/images/*.png
