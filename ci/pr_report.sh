#!/usr/bin/env bash
# The pull-request steps of CI (.github/workflows/ci.yaml), the same when run by hand:
#
#   ci/pr_report.sh report BASE_REV
#       Run the sample pipeline (sample/dvc.yaml) of BASE_REV in a git worktree and of this
#       checkout, then `multitask ci-report`: the per-task markdown report and its PNG in
#       $REPORT_DIR (default reports/ci), naming the commits compared under its heading,
#       appended to $GITHUB_STEP_SUMMARY when set.
#       Exit 1 when a task's accuracy dropped by more than the base's ci.regression_tolerance.
#       The report and the gate run with the base's code (its worktree's src/) and params;
#       this checkout's results are read as data only.
#   ci/pr_report.sh not-run
#       The report of a push whose job failed before `report` gave a verdict (setup, lint, the
#       tests, its own pipeline, or a comparison that could not be made): the gate was not
#       evaluated for it. Posted like a report, so the comment an earlier push left does not
#       go on showing that push's verdict and numbers as if they were this one's.
#   ci/pr_report.sh pending
#       The report of a push whose job has just started: the gate is pending. Posted as the
#       comment before the job runs, so a job cancelled or timed out (which writes no report)
#       leaves a comment that says so, not an earlier push's verdict.
#   ci/pr_report.sh comment REPORT_MD
#       Create the pull request's report comment, or update the one posted before (found by
#       the marker on its first line and its author), with `gh api`. Needs GH_TOKEN,
#       GITHUB_REPOSITORY and PR_NUMBER.
#
# Environment for `report`: BASE_WORKTREE (default $RUNNER_TEMP or $TMPDIR
# /multitask-base-<cksum of this checkout's path>: one per checkout, as a run replaces
# a folder there that is not its base, so two clones must never share it; a second report
# while one runs for the same checkout or worktree stops at once, naming the first's pid),
# VENV_BIN (default .venv/bin, where dvc and multitask live), SKIP_REPRO=1 to reuse results
# already in both folders (a base worktree checked out at another commit is refused). Both
# pipelines run with `dvc repro --pull`: a stage whose outputs the DVC remote holds (pushed by
# CI on main) is pulled, not rerun; without a remote, or when it lacks them, the stage runs.
# The base worktree shares this checkout's DVC cache and its .dvc/config.local (where CI names
# the team's remote), so it pulls from the same remote.
set -euo pipefail

MARKER='<!-- multitask-ci-report -->'
ROOT="$(git rev-parse --show-toplevel)"
cd "$ROOT"

die() { echo "ci/pr_report.sh: $*" >&2; exit 2; }

# Run the sample pipeline in folder $1 with the code of that folder (not this checkout's
# editable install): stage commands call `multitask`, which imports from PYTHONPATH first.
repro_sample() {
    local tree="$1"
    (cd "$tree" && PATH="$VENV_BIN:$PATH" PYTHONPATH="$tree/src${PYTHONPATH:+:$PYTHONPATH}" \
        "$VENV_BIN/dvc" repro --pull sample/dvc.yaml)
}

publish() {  # $1: markdown file; adds the run link, appends it to the job summary
    local report="$1"
    if [ -n "${GITHUB_RUN_ID:-}" ]; then
        local plots=""
        [ ! -f "${report%.md}.png" ] || plots=" (plots: its artifacts)"
        printf '\n[Workflow run](%s/%s/actions/runs/%s)%s\n' \
            "${GITHUB_SERVER_URL:-https://github.com}" "${GITHUB_REPOSITORY:-}" \
            "$GITHUB_RUN_ID" "$plots" >> "$report"
    fi
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        cat "$report" >> "$GITHUB_STEP_SUMMARY"
    fi
}

# The commits a report is about, one markdown line: the pull request's own commit and its base
# (on GitHub the checkout is their merge, HEAD^2 into HEAD^1), so a comment each push updates
# says which push it shows. $1: the base's SHA (empty: HEAD^1 where HEAD is a merge).
commits_line() {
    local base_sha="${1:-}" head_sha pr_sha
    head_sha="$(git rev-parse --verify --quiet HEAD)" || return 0  # no commit yet
    if [ -z "$base_sha" ] && git rev-parse --verify --quiet HEAD^2 > /dev/null; then
        base_sha="$(git rev-parse HEAD^1)"
    fi
    if [ -n "$base_sha" ] && [ "$(git rev-parse --verify --quiet HEAD^1)" = "$base_sha" ] \
            && pr_sha="$(git rev-parse --verify --quiet HEAD^2)"; then
        echo "Pull request \`${pr_sha:0:12}\` merged into base \`${base_sha:0:12}\`" \
            "(merge commit \`${head_sha:0:12}\`)."
    elif [ -n "$base_sha" ]; then
        echo "Head \`${head_sha:0:12}\` against base \`${base_sha:0:12}\`."
    else
        echo "Head \`${head_sha:0:12}\`."
    fi
}

# Put commits_line's line under the report's heading (the marker stays the first line).
name_commits() {  # $1: markdown file, $2: the base's SHA
    local line
    line="$(commits_line "${2:-}")"
    [ -n "$line" ] || return 0
    awk -v line="$line" '{ print } !done && /^## / { print ""; print line; done = 1 }' \
        "$1" > "$1.tmp" && mv "$1.tmp" "$1"
}

# Hold lock file $1 on descriptor $2 until the script exits, or stop naming its holder: two
# reports at once would check out, run and compare in the same folders ($3 says which). The
# lock is flock(2) on the open file, which the script's descriptor keeps after python3 took
# it (flock(1) of util-linux does the same, but macOS lacks it); the kernel drops it when its
# holder dies.
hold() {
    command -v python3 > /dev/null \
        || die "python3 not found: it takes the lock that keeps two reports apart"
    eval "exec $2>>\"\$1\""
    python3 -c 'import fcntl, sys; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)' \
        "$2" 2> /dev/null \
        || die "another ci/pr_report.sh report runs for $3 ($(cat "$1" 2>/dev/null \
        || echo "lock $1")); wait for it to end or stop it, then rerun"
    printf 'pid %s on %s\n' "$$" "$(uname -n)" > "$1"
}

report() {
    local base_rev="${1:?usage: ci/pr_report.sh report BASE_REV}"
    VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
    [ -x "$VENV_BIN/dvc" ] && [ -x "$VENV_BIN/multitask" ] \
        || die "$VENV_BIN has no dvc or multitask; run make setup (or set VENV_BIN)"
    local checkout_id
    checkout_id="$(printf '%s' "$ROOT" | cksum | cut -d ' ' -f 1)"  # POSIX, also on macOS
    local worktree="${BASE_WORKTREE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/multitask-base-$checkout_id}"
    local base_sha
    base_sha="$(git rev-parse --verify --quiet "${base_rev}^{commit}")" \
        || die "$base_rev: no such commit here (on GitHub, check out with fetch-depth: 2)"
    hold "$(git rev-parse --absolute-git-dir)/multitask-pr-report.lock" 8 "this checkout"
    mkdir -p "$(dirname "$worktree")"
    hold "$worktree.lock" 9 "the base worktree $worktree"
    local md
    md="$(fresh_report)"

    if [ "${SKIP_REPRO:-0}" != 1 ]; then
        if [ "$(git -C "$worktree" rev-parse HEAD 2>/dev/null)" != "$base_sha" ] \
                || [ ! -e "$worktree/.git" ]; then
            git worktree remove --force "$worktree" 2>/dev/null || rm -rf "$worktree"
            git worktree prune
            git worktree add --detach --quiet "$worktree" "$base_sha"
        fi
        mkdir -p "$ROOT/.dvc/cache"
        rm -f "$worktree/.dvc/config.local"
        if [ -f "$ROOT/.dvc/config.local" ]; then  # the remote CI set up (absolute URLs)
            cp "$ROOT/.dvc/config.local" "$worktree/.dvc/config.local"
        fi
        (cd "$worktree" && "$VENV_BIN/dvc" cache dir --local "$ROOT/.dvc/cache")
        echo "ci/pr_report.sh: sample pipeline of the base, ${base_sha:0:12}" >&2
        if ! repro_sample "$worktree"; then
            notice "$md" "$base_sha" \
                "**Gate: not evaluated.** The sample pipeline of the base (${base_sha:0:12})" \
                "failed, so there is nothing to compare with; see the job log."
            [ -z "${GITHUB_OUTPUT:-}" ] || echo "gate=skipped" >> "$GITHUB_OUTPUT"
            echo "::warning title=ci-report::base ${base_sha:0:12}: sample pipeline failed; gate skipped"
            return 0
        fi
        echo "ci/pr_report.sh: sample pipeline of this checkout" >&2
        repro_sample "$ROOT"
    elif [ -e "$worktree/.git" ]; then  # reused: it must be the base asked for
        local held
        held="$(git -C "$worktree" rev-parse HEAD)"
        [ "$held" = "$base_sha" ] || die "SKIP_REPRO=1: $worktree holds ${held:0:12}, not" \
            "$base_rev (${base_sha:0:12}); run without SKIP_REPRO=1 to check out and run the base"
    elif [ ! -d "$worktree/sample" ]; then
        die "SKIP_REPRO=1: $worktree holds no base pipeline (no sample/); run without" \
            "SKIP_REPRO=1 to check out and run the base, or set BASE_WORKTREE to where it ran"
    fi

    # The comparison and the gate run the BASE's code and params, the head's results are only
    # data: a pull request cannot rewrite the gate that judges it.
    local status=0
    PYTHONPATH="$worktree/src${PYTHONPATH:+:$PYTHONPATH}" "$VENV_BIN/multitask" ci-report \
        --params "$worktree/sample/params.yaml" --base "$worktree/sample" \
        --head "$ROOT/sample" --output "$md" || status=$?
    # 0 passed, 1 the gate failed (the report says why); anything else: nothing was compared
    # (a base from before exit status 2 meant "bad input" also used 1, without a report)
    case "$status" in 0|1) ;; *) die "multitask ci-report could not compare (exit $status); see the error above" ;; esac
    [ -f "$md" ] || die "multitask ci-report wrote no report (exit $status); see the error above"
    name_commits "$md" "$base_sha"
    publish "$md"
    if [ -n "${GITHUB_OUTPUT:-}" ]; then
        echo "gate=$([ "$status" = 0 ] && echo passed || echo failed)" >> "$GITHUB_OUTPUT"
    fi
    [ "$status" = 0 ] || annotate_failures "$md"
    return "$status"
}

# One error annotation per regressed task (the report's "Gate: failed." list), so the pull
# request's checks name the task and its numbers, not only "exit code 1". Workflow commands
# read % as an escape: it is written %25.
annotate_failures() {
    awk '/^\*\*Gate: failed\.\*\*/ { listing = 1; next }
         listing && /^- / { sub(/^- /, ""); gsub(/%/, "%25"); print "::error title=ci-report gate::" $0 }
         listing && /^#/ { exit }' "$1"
}

# A report that compares nothing ($1, written whole): the marker, the heading, the paragraph
# of the arguments after $2 (one line each) and the commits it is about ($2: the base's SHA;
# empty: HEAD^1 of a merge), published like a report.
notice() {
    local md="$1" base_sha="$2"
    shift 2
    {
        echo "$MARKER"
        echo "## Sample pipeline: this pull request vs its base"
        echo
        printf '%s\n' "$@"
    } > "$md"
    name_commits "$md" "$base_sha"
    publish "$md"
}

# The report file of $REPORT_DIR, with an earlier run's report and plots removed.
fresh_report() {
    local out_dir="${REPORT_DIR:-reports/ci}"
    mkdir -p "$out_dir"
    rm -f "$out_dir/ci_report.md" "$out_dir/ci_report.png"
    echo "$out_dir/ci_report.md"
}

not_run() {
    notice "$(fresh_report)" "" \
        "**Gate: not evaluated.** This push's job failed before the per-task report was" \
        "made (in setup, lint, the tests, the sample pipeline or the comparison), so no" \
        "task was compared; see the job log. Earlier pushes' results no longer apply."
    [ -z "${GITHUB_OUTPUT:-}" ] || echo "gate=not-run" >> "$GITHUB_OUTPUT"
    echo "::warning title=ci-report::the job failed before the report; gate not evaluated"
}

pending() {
    notice "$(fresh_report)" "" \
        "**Gate: pending.** CI is running for this push; its report replaces this comment" \
        "when the job ends. If the workflow run has ended and this is still here, the job" \
        "was cancelled or ran out of time before the report: the gate was not evaluated" \
        "for this push, and earlier pushes' results no longer apply."
}

comment() {
    local body_file="${1:?usage: ci/pr_report.sh comment REPORT_MD}"
    [ -f "$body_file" ] || die "$body_file: no such report"
    : "${GITHUB_REPOSITORY:?GITHUB_REPOSITORY (owner/name) is required}"
    : "${PR_NUMBER:?PR_NUMBER is required}"
    local author="${COMMENT_AUTHOR:-github-actions[bot]}"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # --paginate prints one JSON array per page; the filter reads them all.
    gh api --paginate "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" > "$tmp/comments.json"
    python3 - "$body_file" "$tmp/comments.json" "$author" "$MARKER" "$tmp/payload.json" \
        > "$tmp/comment_id" <<'PY'
import json
import sys

body_file, comments_file, author, marker, payload_file = sys.argv[1:]
body = open(body_file, encoding="utf-8").read()
if not body.startswith(marker):
    sys.exit(f"{body_file}: does not start with {marker}; pass the file multitask ci-report wrote")
limit = 65_000  # GitHub rejects comments over 65,536 characters
if len(body) > limit:
    body = body[:limit] + "\n\n_Truncated: the job summary has the whole report._\n"
with open(payload_file, "w", encoding="utf-8") as handle:
    json.dump({"body": body}, handle)
text, decoder, position, ids = open(comments_file, encoding="utf-8").read(), json.JSONDecoder(), 0, []
while position < len(text.rstrip()):
    while text[position].isspace():
        position += 1
    page, position = decoder.raw_decode(text, position)
    ids += [c["id"] for c in page
            if c["user"]["login"] == author and c["body"].startswith(marker)]
print(ids[0] if ids else "")
PY
    local comment_id
    comment_id="$(cat "$tmp/comment_id")"
    if [ -n "$comment_id" ]; then
        gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$comment_id" \
            --input "$tmp/payload.json" > /dev/null
        echo "ci/pr_report.sh: updated comment $comment_id on #$PR_NUMBER"
    else
        gh api --method POST "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" \
            --input "$tmp/payload.json" > /dev/null
        echo "ci/pr_report.sh: created the report comment on #$PR_NUMBER"
    fi
}

case "${1:-}" in
    report) shift; report "$@" ;;
    not-run) shift; not_run "$@" ;;
    pending) shift; pending "$@" ;;
    comment) shift; comment "$@" ;;
    *) die "usage: ci/pr_report.sh report BASE_REV | not-run | pending | comment REPORT_MD" ;;
esac
