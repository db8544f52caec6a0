#!/bin/sh
# The image's entry point: `twindns run --takeover ARGS`.
#
# --takeover: a pod of a new DaemonSet revision (maxSurge 1) starts beside the
# old one on the same node and takes the address, rules and cache over from
# it without losing a query; with nothing running it is a plain start.
#
# A supervisor that stepped down to a successor exits 0 on its own. Its
# container must not exit then: kubelet would restart it, and the restarted
# one would take the node back. So it waits here, idle, until the DaemonSet
# controller deletes the old pod (SIGTERM). Any other exit is the container's.
pid=""
stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid"
        exit $?
    fi
    exit 0
}
trap stop TERM INT
twindns run --takeover "$@" &
pid=$!
wait "$pid"
rc=$?
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi
pid=""
echo "twindns-entrypoint: the supervisor handed the node to a successor; waiting for this pod to be deleted" >&2
while :; do
    sleep 3600 &
    wait $!
done
