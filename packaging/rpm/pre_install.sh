# The service's system user and group (the configuration is 0640 root:haproxy-grpc-agent).
getent group haproxy-grpc-agent >/dev/null || groupadd -r haproxy-grpc-agent
getent passwd haproxy-grpc-agent >/dev/null || \
    useradd -r -g haproxy-grpc-agent -d / -s /sbin/nologin \
        -c "haproxy-grpc-agent daemon" haproxy-grpc-agent
exit 0
