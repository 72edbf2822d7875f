# $1 = 1: first install: enable and start. $1 >= 2: upgrade: the old instance keeps
# running until post_uninstall of the old package restarts it (try-restart).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now haproxy-grpc-agent.service >/dev/null 2>&1 || :
    fi
fi
exit 0
