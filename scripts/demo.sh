#!/usr/bin/env bash
# Set up (if needed) and hold a spoken conversation from the bundled example audio.
# With a sound card, `.venv/bin/python -m realtime_pipeline` talks through the microphone instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m realtime_pipeline \
    --input examples/audio/question.wav --input examples/audio/follow_up.wav \
    --output reply.wav "$@"
