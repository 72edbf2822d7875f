"""The interop health server on grpcio: grpc_health.v1.health.HealthServicer.

The command line and the stdin commands are the same for every stack; see
tests/interop/README.md.
"""

import argparse
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# How long a graceful stop lets calls finish before cancelling them (Watch streams
# never finish on their own).
GRACE_SECONDS = 1.0
# How long calls may go on after a connection reached its maximum age.
AGE_GRACE_MS = 1000

STATUSES = {
    "SERVING": health_pb2.HealthCheckResponse.SERVING,
    "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING,
}


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--services", default="")
    parser.add_argument("--tls", nargs=2, metavar=("CERT_PEM", "KEY_PEM"))
    parser.add_argument("--max-streams", type=int)
    parser.add_argument("--max-connection-age-ms", type=int)
    return parser.parse_args()


def main():
    args = parse_args()
    options = []
    if args.max_streams is not None:
        options.append(("grpc.max_concurrent_streams", args.max_streams))
    if args.max_connection_age_ms is not None:
        options.append(("grpc.max_connection_age_ms", args.max_connection_age_ms))
        options.append(("grpc.max_connection_age_grace_ms", AGE_GRACE_MS))
    # Watch is non-blocking in HealthServicer, so the pool only runs Checks.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for service in [""] + [name for name in args.services.split(",") if name]:
        servicer.set(service, STATUSES["SERVING"])

    address = f"127.0.0.1:{args.port}"
    if args.tls:
        cert_path, key_path = args.tls
        with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        sys.exit(f"cannot listen on {address}")
    server.start()
    print(f"listening {port}", flush=True)

    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["set"] and len(words) == 3 and words[2] in STATUSES:
            service = "" if words[1] == "-" else words[1]
            servicer.set(service, STATUSES[words[2]])
        elif words == ["stop"]:
            servicer.enter_graceful_shutdown()
            server.stop(GRACE_SECONDS).wait()
            print("ok", flush=True)
            return
        else:
            sys.exit(f"unknown command {line!r}")
        print("ok", flush=True)
    server.stop(None)


if __name__ == "__main__":
    main()
