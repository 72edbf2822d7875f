# $1 = 0: removal (not upgrade): stop and disable.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy-grpc-agent.service >/dev/null 2>&1 || :
fi
exit 0
