#!/usr/bin/env bash
# The coordinator embeds dashboard/dist, which is committed so that building Ferry needs no
# Node. This rebuilds it from the sources with the locked dependencies (`npm ci`) and fails
# when the result differs from the committed copy: sources changed without `npm run build`,
# or a build that is not reproducible.
set -euo pipefail
cd "$(dirname "$0")"

npm ci --no-audit --no-fund
npm run build

changed=0
git diff --exit-code --stat -- dist || changed=1
untracked=$(git ls-files --others --exclude-standard -- dist)
if [ -n "$untracked" ]; then
    echo "not committed:"
    echo "$untracked"
    changed=1
fi
if [ "$changed" -ne 0 ]; then
    echo "dashboard/dist does not match its sources: run \`npm run build\` in dashboard/ and commit dist/" >&2
    exit 1
fi
echo "dashboard/dist matches its sources"
