# ---- xqute_ssh job wrapper (static part) ----------------------------------
# Everything above this line is generated: quoted values and hook functions.
# Nothing below is templated, so no value can change what this code does.
#
# Protocol (the files are the source of truth):
#   the controller writes job.status=SUBMITTED (3) before starting us;
#   we write RUNNING (4) first, then job.rc, then FINISHED (6) or FAILED (7).
# The controller never writes a status over one we wrote.
#
# Signals: the controller kills a job with TERM to our process group (we are
# its leader), then KILL after a grace period.  A timeout does the same from
# in here and records rc 124.
#
# Only the wrapper itself may write the job's files or signal its group.  A
# process bash forks (the timer, the command) runs our traps if a signal
# arrives before it execs, and a check of $BASHPID proved unreliable there
# (seen under load: the timer, killed right after its fork, wrote job.status
# as the wrapper's final KILL landed: an empty file).  So every handler asks
# the kernel who runs it (xq_is_wrapper).

xq_status_file=$XQUTE_JOB_METADIR/job.status
xq_rc_file=$XQUTE_JOB_METADIR/job.rc
xq_pid=
xq_timer=
xq_beat=
xq_rc=
xq_killed=
xq_timed_out=
xq_done=
# The host's end-event relay (schedulers/ssh/events.py): not the job's business.
xq_events=${XQ_EVENTS-}
unset XQ_EVENTS

# Write a small status/rc file.  One short write: a reader sees the old
# content, nothing (then it keeps what it knew) or the new content.  No mv, so
# no extra process per write.
xq_put() {
    printf '%s\n' "$2" > "$1"
}

# Are we the leader of our process group?  Read /proc (no fork) to decide
# whether a group-wide signal would reach only this job.
xq_group=
if [ -r "/proc/$$/stat" ]; then
    read -r xq_stat < "/proc/$$/stat"
    xq_stat=${xq_stat##*) }
    set -f
    # shellcheck disable=SC2086
    set -- $xq_stat
    set +f
    [ "$3" = "$$" ] && xq_group=1
    # "pid starttime": lets a controller that lost its connection while
    # starting us find out that we did start (and not start us twice).
    printf '%s %s\n' "$$" "${20}" > "$XQUTE_JOB_METADIR/job.pid"
    set --
fi

xq_signal_job() {
    if [ -n "$xq_group" ]; then
        kill -s "$1" -- "-$$" 2>/dev/null
    elif [ -n "$xq_pid" ]; then
        kill -s "$1" "$xq_pid" 2>/dev/null
    fi
}

# Start a timer that sends us USR1 after $1 seconds: a separate /bin/sh
# started as a simple command (it execs at once; a ( subshell ) of ours would
# run bash code with our traps for longer).  It kills its own sleep when told
# to stop ($! is set before any trap can run), so no sleep outlives the job.
xq_timer_sh='trap "kill \$! 2>/dev/null; exit 0" TERM; sleep "$1" & wait $! && kill -s USR1 "$2" 2>/dev/null'
xq_alarm() {
    /bin/sh -c "$xq_timer_sh" xq-timer "$1" "$$" &
    xq_timer=$!
}

# Touch job.pid every $XQ_HEARTBEAT seconds while we run (its mtime is the
# heartbeat): where the workdir is shared, it tells a controller that cannot
# reach this host whether the job still runs.  One fork of ours (a ( subshell )
# has our traps reset to the defaults; until then the handlers ask
# xq_is_wrapper), stopped like the timer; no extra file, and short jobs never
# pay for a touch.  It waits with bash's own `read -t` on a FIFO that nobody
# writes to (made once per user on the host), not with a `sleep` process per
# beat: one process per job instead of two (a shell and its sleep).  Where the
# FIFO cannot be made, or a read returns early (someone wrote to it, or it is
# not a FIFO), it falls back to sleep.
xq_heartbeat() {
    (
        f=$XQUTE_JOB_METADIR/job.pid
        fifo=${HOME:+$HOME/.cache/xqute-ssh/sleep.fifo}
        if [ -n "$fifo" ] && [ ! -p "$fifo" ]; then
            mkdir -p -- "${fifo%/*}" 2>/dev/null && mkfifo -m 600 -- "$fifo" 2>/dev/null
            [ -p "$fifo" ] || fifo=
        fi
        while :; do
            if [ -n "$fifo" ] && [ -p "$fifo" ] && [ -O "$fifo" ]; then
                read -r -t "$XQ_HEARTBEAT" _ <> "$fifo"
                [ $? -gt 128 ] || fifo=
            else  # its own sleep goes with it
                trap 'kill $! 2>/dev/null; exit 0' TERM
                sleep "$XQ_HEARTBEAT" & wait $!
                trap - TERM
            fi
            kill -0 "$$" 2>/dev/null || exit 0
            touch -c -- "$f" 2>/dev/null || exit 0
        done
    ) </dev/null >/dev/null 2>&1 &
    xq_beat=$!
}

# Are we the wrapper process itself, or a fork of it that has not exec'd yet?
xq_is_wrapper() {
    local xq_me
    read -r xq_me _ < /proc/self/stat 2>/dev/null || xq_me=$BASHPID
    [ "$xq_me" = "$$" ]
}

# TERM, INT, HUP: remember it; the wait loop below sees the job end.
xq_on_signal() {
    if ! xq_is_wrapper; then  # a fork of ours, told to stop: stop
        case "$1" in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
    fi
    xq_killed=$1
}

xq_on_alarm() {
    xq_is_wrapper || exit 0
    if [ -z "$xq_timed_out" ]; then
        xq_timed_out=1
        echo "xqute: job timed out after ${XQ_TIMEOUT}s; sending TERM to its process group" >&2
        xq_signal_job TERM
        xq_alarm "$XQ_KILL_GRACE"
    else
        echo "xqute: job still running ${XQ_KILL_GRACE}s after TERM; sending KILL" >&2
        xq_rc=124
        xq_finish
    fi
}

xq_finish() {
    local xq_status=$?  # a fork of ours exits with the status it had
    xq_is_wrapper || exit "$xq_status"
    [ -n "$xq_done" ] && return
    xq_done=1
    trap '' TERM INT HUP USR1
    [ -n "$xq_timer" ] && kill "$xq_timer" 2>/dev/null
    [ -n "$xq_beat" ] && kill "$xq_beat" 2>/dev/null
    [ -n "$xq_rc" ] || xq_rc=1
    [ -n "$xq_timed_out" ] && xq_rc=124
    rc=$xq_rc
    xq_hook_end
    case "$rc" in ''|*[!0-9]*) rc=1 ;; esac
    xq_put "$xq_rc_file" "$rc"
    if [ "$rc" -eq 0 ]; then xq_put "$xq_status_file" 6; else xq_put "$xq_status_file" 7; fi
    # Tell the controller now rather than at its next poll: one short line
    # into the relay's FIFO (atomic, never blocks; opened read-write so no
    # open can wait for a reader).  Gone with its directory when the relay
    # ends, so a stale path fails instead of making a file.  Only a hint: the
    # files above are what the controller believes.
    if [ -n "$xq_events" ] && [ -p "$xq_events" ]; then
        { printf '%s\n' "$XQUTE_JOB_INDEX" 1<>"$xq_events"; } 2>/dev/null
    fi
    # After a timeout nothing of the job may outlive it, not even children
    # that ignored TERM: the files are written, so KILL the group (and us).
    # With XQ_KILL_ON_END, the same for what a job left behind in the
    # background (off by default: plain ssh leaves such processes running).
    if [ -n "$xq_timed_out" ] || [ -n "$XQ_KILL_ON_END" ]; then xq_signal_job KILL; fi
}

trap 'xq_finish' EXIT
trap 'xq_on_signal TERM' TERM
trap 'xq_on_signal INT' INT
trap 'xq_on_signal HUP' HUP
trap 'xq_on_alarm' USR1

xq_put "$xq_status_file" 4

if [ -n "$XQ_CWD" ]; then
    cd -- "$XQ_CWD" || { echo "xqute: cannot change to the job directory $XQ_CWD" >&2; xq_rc=1; exit 1; }
fi

xq_hook_init
xq_hook_prep

[ "$XQ_TIMEOUT" -gt 0 ] 2>/dev/null && xq_alarm "$XQ_TIMEOUT"
[ "$XQ_HEARTBEAT" -gt 0 ] 2>/dev/null && xq_heartbeat

# The launcher moved BASH_ENV aside so that our own bash did not read it (its
# output would land in job.stdout before the job's own): give it back.
if [ -n "${XQ_BASH_ENV+x}" ]; then
    export BASH_ENV="$XQ_BASH_ENV"
    unset XQ_BASH_ENV
fi

# Killed before the command even started: do not start it.
[ -n "$xq_killed" ] && { xq_rc=143; exit 143; }

# A missing program is reported as a shell prompt would ("cmd: command not
# found"), not with this script's path and line number.
command_not_found_handle() { printf '%s: command not found\n' "$1" >&2; return 127; }
case ${XQ_CMD[0]} in */*)
    if [ ! -e "${XQ_CMD[0]}" ]; then
        printf '%s: No such file or directory\n' "${XQ_CMD[0]}" >&2; xq_rc=127; exit 127
    elif [ -d "${XQ_CMD[0]}" ] || [ ! -x "${XQ_CMD[0]}" ]; then
        printf '%s: Permission denied (not an executable file)\n' "${XQ_CMD[0]}" >&2; xq_rc=126; exit 126
    fi ;;
esac

"${XQ_CMD[@]}" &
xq_pid=$!
# A signal for the group that landed between the check above and the fork
# missed the command: pass it on (it reaches us too; the trap only notes it).
[ -n "$xq_killed" ] && xq_signal_job "$xq_killed"

# wait returns early when a trapped signal arrives; go on until the command
# is really gone, then ask once more for its saved exit status.
while :; do
    wait "$xq_pid"
    xq_rc=$?
    kill -0 "$xq_pid" 2>/dev/null && continue
    wait "$xq_pid" 2>/dev/null
    xq_last=$?
    # 127 / negative: bash already handed the status to the first wait.
    case "$xq_last" in 127|-*) ;; *) xq_rc=$xq_last ;; esac
    break
done

exit "$xq_rc"
