#!/usr/bin/env bash
# ci/dvc_remote.sh [URL]
#     Make URL (s3://bucket/path, ssh://host/path, gs://..., azure://..., or an absolute folder)
#     the default DVC remote of this checkout, in .dvc/config.local (git-ignored; ci/pr_report.sh
#     hands it to the base worktree too), and install the DVC plugin its scheme needs, pinned.
#     Credentials come from the environment as each plugin reads them (S3: AWS_ACCESS_KEY_ID,
#     AWS_SECRET_ACCESS_KEY). Without URL (a repository that sets no DVC_REMOTE_URL variable),
#     nothing changes: the project's default remote is a folder in the user cache
#     (.dvc/config), empty on a fresh CI runner, and every stage runs.
# Environment: VENV_BIN (default .venv/bin).
set -euo pipefail

url="${1:-}"
VENV_BIN="${VENV_BIN:-.venv/bin}"
if [ -z "$url" ]; then
    echo "ci/dvc_remote.sh: no DVC_REMOTE_URL; stages run unless the DVC cache holds them" >&2
    exit 0
fi
case "$url" in
    s3://*) plugin="dvc-s3==3.3.0" ;;
    ssh://*) plugin="dvc-ssh==4.3.0" ;;
    gs://*) plugin="dvc-gs==3.1.0" ;;
    azure://*) plugin="dvc-azure==3.1.1" ;;
    /*) plugin="" ;;
    *) echo "ci/dvc_remote.sh: $url: not a URL DVC's plugins here read (s3://, ssh://, gs://," \
            "azure:// or an absolute folder)" >&2; exit 2 ;;
esac
if [ -n "$plugin" ]; then
    "$VENV_BIN/pip" install --quiet "$plugin"
fi
"$VENV_BIN/dvc" remote add --local --force --default team "$url"
echo "ci/dvc_remote.sh: default DVC remote 'team' set (.dvc/config.local)" >&2
