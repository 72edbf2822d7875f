# $1 >= 1: upgrade: restart onto the new binary, only if it was running.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart haproxy-grpc-agent.service >/dev/null 2>&1 || :
    fi
fi
exit 0
