#!/bin/sh
# Render a report.html / summary.html headless to a PNG, for a person to look at.
#   benchmarks/render_report.sh OUT/summary.html summary.png [WIDTH [HEIGHT]]
# Needs Chromium (Debian: apt-get install -y chromium). The page is self-contained (images are data URIs).
set -eu
page=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1200}
height=${4:-2400}
exec chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size="$width,$height" --screenshot="$png" "file://$page"
