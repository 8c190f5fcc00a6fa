#!/usr/bin/env bash
# Download SenseVoiceSmall (FunASR, ~936 MB) into models/SenseVoiceSmall, on purpose and once.
#
# The server never downloads weights by itself; the `funasr` ASR provider refuses to start
# until this folder is complete. Run this on a machine with internet access (or copy the folder
# over afterwards).
#
#   scripts/download_models.sh                      # from ModelScope (fast in mainland China)
#   scripts/download_models.sh --source hf          # from Hugging Face
#   HF_ENDPOINT=https://hf-mirror.com scripts/download_models.sh --source hf   # via a mirror
#
# Sources:  ModelScope  iic/SenseVoiceSmall          https://modelscope.cn/models/iic/SenseVoiceSmall
#           HuggingFace FunAudioLLM/SenseVoiceSmall  https://huggingface.co/FunAudioLLM/SenseVoiceSmall
# Tools, first found wins with --method auto: the hub's CLI (`modelscope`, or `hf` /
# `huggingface-cli`), then curl, then wget. --method git clones with git-lfs instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="modelscope"
METHOD="auto"
DEST="$ROOT/models/SenseVoiceSmall"
FORCE=0
GIT_TMP=""

MS_REPO="iic/SenseVoiceSmall"
HF_REPO="FunAudioLLM/SenseVoiceSmall"
# What funasr loads (see server/providers/asr/funasr.py REQUIRED_FILES); configuration.json
# only maps these names and is fetched for completeness.
REQUIRED=(model.pt config.yaml chn_jpn_yue_eng_ko_spectok.bpe.model am.mvn)
OPTIONAL=(configuration.json)
# model.pt as published on both hubs (Hugging Face LFS pointer of FunAudioLLM/SenseVoiceSmall).
MODEL_PT_SIZE=936291369
MODEL_PT_SHA256="833ca2dcfdf8ec91bd4f31cfac36d6124e0c459074d5e909aec9cabe6204a3ea"
MIN_MODEL_PT_BYTES=$((100 * 1024 * 1024))

usage() {
    cat <<EOF
Usage: $(basename "$0") [--source modelscope|hf] [--method auto|cli|curl|git] [--dest DIR] [--force]

  --source   where to download from (default: modelscope)
  --method   how: the hub's CLI, curl/wget, or a git-lfs clone (default: auto)
  --dest     target folder (default: models/SenseVoiceSmall)
  --force    download again even if the folder already checks out

Hugging Face mirrors: set HF_ENDPOINT (e.g. https://hf-mirror.com).
EOF
}

info() { printf '\033[1;36m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE="${2:-}"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --method) METHOD="${2:-}"; shift 2 ;;
        --method=*) METHOD="${1#*=}"; shift ;;
        --dest) DEST="${2:-}"; shift 2 ;;
        --dest=*) DEST="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

case "$SOURCE" in
    modelscope|ms) SOURCE="modelscope" ;;
    hf|huggingface) SOURCE="hf" ;;
    *) die "--source must be modelscope or hf (got '$SOURCE')" ;;
esac
case "$METHOD" in auto|cli|curl|git) ;; *) die "--method must be auto, cli, curl or git" ;; esac
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac

file_size() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1"; }

# Prints what is wrong with one file; no output means it is usable.
file_problem() {
    local f="$1" size
    if [ ! -s "$DEST/$f" ]; then
        echo "$f is missing or empty"
    # (no `| grep -q` here: with pipefail an early-exiting grep can fail the pipeline)
    elif [ "$(head -c 23 "$DEST/$f" | tr -d '\000')" = "version https://git-lfs" ]; then
        echo "$f is a Git LFS pointer, not the file"
    elif [ "$f" = model.pt ]; then
        size="$(file_size "$DEST/$f")"
        if [ "$size" -lt "$MIN_MODEL_PT_BYTES" ]; then
            echo "model.pt is only $size bytes (expected ~$MODEL_PT_SIZE): interrupted download?"
        fi
    fi
}

# Prints one line per problem; no output means the folder is usable.
check_folder() {
    local f
    for f in "${REQUIRED[@]}"; do
        file_problem "$f"
    done
    if [ -s "$DEST/config.yaml" ] && ! grep -Eq '^model:[[:space:]]*SenseVoiceSmall[[:space:]]*$' "$DEST/config.yaml"; then
        echo "config.yaml does not describe SenseVoiceSmall"
    fi
}

file_url() {
    if [ "$SOURCE" = modelscope ]; then
        echo "https://modelscope.cn/models/$MS_REPO/resolve/master/$1"
    else
        echo "${HF_ENDPOINT:-https://huggingface.co}/$HF_REPO/resolve/main/$1"
    fi
}

# One file over HTTP, resumable, written under a .part name until complete.
fetch_file() {
    local name="$1" url part
    url="$(file_url "$name")"
    part="$DEST/$name.part"
    info "$name <- $url"
    if have curl; then
        curl -fL --retry 5 --retry-delay 3 -C - --progress-bar -o "$part" "$url"
    elif have wget; then
        wget -c --tries=5 -O "$part" "$url"
    else
        die "neither curl nor wget is installed"
    fi
    mv -f "$part" "$DEST/$name"
}

download_http() {
    local f
    for f in "${REQUIRED[@]}"; do
        if [ -z "$(file_problem "$f")" ]; then
            info "$f is already here"
            continue
        fi
        fetch_file "$f"
    done
    for f in "${OPTIONAL[@]}"; do
        fetch_file "$f" || warn "could not fetch optional $f (not needed to run)"
    done
}

cli_for_source() {
    if [ "$SOURCE" = modelscope ]; then
        have modelscope && echo modelscope
    elif have hf; then
        echo hf
    elif have huggingface-cli; then
        echo huggingface-cli
    fi
    return 0
}

download_cli() {
    local cli="$1"
    info "downloading with $cli"
    case "$cli" in
        # --model/--local_dir are accepted by old and new modelscope versions alike.
        modelscope) modelscope download --model "$MS_REPO" "${REQUIRED[@]}" "${OPTIONAL[@]}" --local_dir "$DEST" ;;
        hf|huggingface-cli) "$cli" download "$HF_REPO" "${REQUIRED[@]}" "${OPTIONAL[@]}" --local-dir "$DEST" ;;
    esac
}

download_git() {
    have git || die "git is not installed"
    git lfs version >/dev/null 2>&1 || die "git-lfs is not installed (apt-get install git-lfs; git lfs install)"
    local url f
    if [ "$SOURCE" = modelscope ]; then
        url="https://www.modelscope.cn/$MS_REPO.git"
    else
        url="${HF_ENDPOINT:-https://huggingface.co}/$HF_REPO"
    fi
    GIT_TMP="$(mktemp -d "${DEST%/}.git-XXXXXX")"
    trap 'rm -rf "$GIT_TMP"' EXIT
    info "git clone $url (with git-lfs)"
    git clone --depth 1 "$url" "$GIT_TMP/repo"
    git -C "$GIT_TMP/repo" lfs pull
    for f in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
        if [ -f "$GIT_TMP/repo/$f" ]; then
            mv -f "$GIT_TMP/repo/$f" "$DEST/$f"
        fi
    done
}

verify_checksum() {
    local size sum
    size="$(file_size "$DEST/model.pt")"
    if [ "$size" != "$MODEL_PT_SIZE" ]; then
        warn "model.pt is $size bytes, the known release is $MODEL_PT_SIZE (a newer upload, or damaged)"
        return 0
    fi
    if have sha256sum; then
        info "checking model.pt sha256"
        sum="$(sha256sum "$DEST/model.pt" | cut -d' ' -f1)"
        if [ "$sum" != "$MODEL_PT_SHA256" ]; then
            die "model.pt sha256 is $sum, expected $MODEL_PT_SHA256: delete it and run again"
        fi
    fi
}

print_config() {
    local rel="$DEST"
    case "$DEST" in "$ROOT"/*) rel="${DEST#"$ROOT"/}" ;; esac
    cat <<EOF

SenseVoiceSmall is ready in $DEST.

The provider also needs the Python packages (torch is installed by scripts/install.sh):
    pip install 'funasr[knf]'

Put this in config.yaml (or your override file):

asr:
  type: funasr
  model_dir: $rel
  language: auto        # auto | zh | en | yue | ja | ko
  use_itn: true
  device: cpu           # or cuda:0
EOF
}

mkdir -p "$DEST"

if [ "$FORCE" -eq 0 ] && [ -z "$(check_folder)" ]; then
    info "$DEST already holds SenseVoiceSmall (use --force to download again)"
    print_config
    exit 0
fi

if [ "$FORCE" -eq 1 ]; then
    for f in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
        rm -f "${DEST:?}/$f"
    done
fi

case "$METHOD" in
    git) download_git ;;
    curl) download_http ;;
    cli)
        CLI="$(cli_for_source)"
        [ -n "$CLI" ] || die "no CLI for $SOURCE (pip install modelscope, or pip install huggingface_hub)"
        download_cli "$CLI"
        ;;
    auto)
        CLI="$(cli_for_source)"
        if [ -n "$CLI" ]; then
            download_cli "$CLI" || { warn "$CLI failed; falling back to plain HTTP"; download_http; }
        else
            download_http
        fi
        ;;
esac

PROBLEMS="$(check_folder)"
if [ -n "$PROBLEMS" ]; then
    printf '%s\n' "$PROBLEMS" | sed 's/^/  - /' >&2
    die "the download in $DEST is incomplete; run again (downloads resume)"
fi
verify_checksum
print_config
