#!/usr/bin/env bash
# Idempotent set-up for a fresh machine, in one of two profiles:
#   plan (make plan): a virtualenv in .venv with the project and its pinned runtime dependencies only;
#   test (make test, make setup): also the system packages the tests need (scripts/apt-packages.txt: QEMU,
#         debootstrap, Prometheus, ...) and the pinned dev dependencies.
# constraints.txt pins the whole tree. Re-running is a no-op unless pyproject.toml, constraints.txt or
# scripts/apt-packages.txt changed; a test set-up also satisfies a later plan set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${1:-test}
if [[ "$PROFILE" != plan && "$PROFILE" != test ]]; then
  echo "setup: unknown profile '$PROFILE' (plan or test)" >&2
  exit 2
fi
VENV=.venv
PYTHON=${PYTHON:-python3}
stamp_inputs=(pyproject.toml constraints.txt scripts/apt-packages.txt scripts/tools-constraints.txt)
digest=$(cat "${stamp_inputs[@]}" | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$PROFILE-$digest"
if [[ -f "$stamp" || -f "$VENV/.setup-test-$digest" ]]; then
  exit 0
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
if [[ "$PROFILE" == test ]]; then
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done < scripts/apt-packages.txt
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
if (( ${#missing[@]} )); then
  if command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python 3.11+ is required, found {sys.version.split()[0]}")
PY

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip==25.3
extras=""
[[ "$PROFILE" == test ]] && extras="[dev]"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".$extras"
if [[ "$PROFILE" == test ]]; then
  # checkov (the Kubernetes manifests' scan) pins a boto3 the project's pin excludes: it gets a venv of its own.
  TOOLS=.venv-tools
  [[ -x "$TOOLS/bin/python" ]] || "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip==25.3
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check -c scripts/tools-constraints.txt checkov==3.3.30
fi
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "setup: ready ($VENV, $PROFILE profile)"
