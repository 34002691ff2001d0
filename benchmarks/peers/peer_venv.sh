# Sourced by the peer environment scripts (openvino_env.sh, vllm_env.sh): the part every such
# venv shares. `peer_venv VENV "import ..."` prints the venv's python and exits when the venv
# already imports what it should; otherwise it creates the venv (Python 3.11 unless $PYTHON)
# with an up-to-date pip and the CPU torch wheel that lies on disk (any other torch spec would
# download a CUDA build), and returns so the caller installs the peer itself.
peer_venv() {
    local venv=$1 imports=$2
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$imports" 2>/dev/null; then
        echo "$(cd "$venv" && pwd)/bin/python"
        exit 0
    fi
    test -x "$venv/bin/python" || "${PYTHON:-python3.11}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet torch==2.13.0 >&2
}
