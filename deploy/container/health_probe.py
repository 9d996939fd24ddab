"""grpc_health_probe's command line and exit codes, in Python.

The image's HEALTHCHECK runs grpc_health_probe, which is built in the image
only. deploy/test.sh runs the same command line through this stand-in
against a real server, so the flags, the address and the service name the
Dockerfile and the Kubernetes probes use are checked without a container:

    python health_probe.py -addr=127.0.0.1:50051 [-service=NAME] [-connect-timeout=2s] [-rpc-timeout=2s]
    python health_probe.py --dockerfile deploy/container/Dockerfile PORT   # its HEALTHCHECK's flags

Exit codes as grpc_health_probe's: 0 SERVING, 1 invalid arguments,
2 connection failed, 3 RPC failed, 4 answered but not SERVING.
"""

from __future__ import annotations

import argparse
import re
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def seconds(text: str) -> float:
    """A Go duration of the forms the probe's flags take: 250ms, 2s, 1m."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def dockerfile_probe(dockerfile: str, port: int) -> list[str]:
    """The flags of the Dockerfile's HEALTHCHECK, aimed at 127.0.0.1:port.

    Fails if the probe's port is not the one the image's server listens on
    (ENV EXPRESSCACHE_LISTEN), which is what a container would run into.
    """
    import json

    text = open(dockerfile).read().replace("\\\n", " ")
    cmd = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M).group(1))
    listen = re.search(r"EXPRESSCACHE_LISTEN=(\S+)", text).group(1)
    flags = cmd[1:]
    addr = next(f for f in flags if f.startswith("-addr="))
    if addr.rsplit(":", 1)[1] != listen.rsplit(":", 1)[1]:
        raise SystemExit(f"HEALTHCHECK probes {addr} but the image listens on {listen}")
    return [f"-addr=127.0.0.1:{port}" if f == addr else f for f in flags]


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--dockerfile":
        sys.argv[1:] = dockerfile_probe(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(prog="grpc_health_probe")
    ap.add_argument("-addr", required=True)
    ap.add_argument("-service", default="")
    ap.add_argument("-connect-timeout", type=seconds, default=1.0)
    ap.add_argument("-rpc-timeout", type=seconds, default=1.0)
    try:
        args = ap.parse_args()
    except SystemExit:
        return 1
    channel = grpc.insecure_channel(args.addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
    except grpc.FutureTimeoutError:
        print(f"failed to connect service at {args.addr!r}", file=sys.stderr)
        return 2
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.rpc_timeout
        )
    except grpc.RpcError as e:
        print(f"health rpc failed: {e.code()}: {e.details()}", file=sys.stderr)
        return 3
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"service unhealthy (responded with {status})", file=sys.stderr)
        return 4
    print(f"status: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
