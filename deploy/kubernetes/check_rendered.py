"""What the API schemas cannot tell about the rendered manifests.

kubernetes-validate proves each object is well-formed; this checks that
they fit together and fit the server:

- several replicas run on a shared (DynamoDB) index, never SQLite;
- the pod's grace period outlasts preStop plus --shutdown-grace;
- readiness asks for the cache service (NOT_SERVING while draining),
  liveness for the server as a whole, both on the port the server listens on;
- Service, PodDisruptionBudget and NetworkPolicy select the server's pods;
- the ServiceAccount carries an IRSA role ARN and the pods use it;
- every $(VAR) the containers' arguments use is defined;
- the CronJob runs the same image and fails fast only on exit codes the CLI
  really has.

    python check_rendered.py RENDERED.yaml [--probes]

--probes prints the gRPC probes as lines `KIND PORT SERVICE` instead, for
deploy/test.sh to send them to a real server.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6}  # client/src/cli/exit.rs, README


def seconds(duration: str) -> float:
    """A humantime duration as the server's flags take it: 30s, 1m30s, 500ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration.replace(" ", ""):
        raise ValueError(f"cannot read duration {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def proto_service() -> str:
    text = (ROOT / "proto/expresscache/v1/cache.proto").read_text()
    package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
    service = re.search(r"^service\s+(\w+)", text, re.M).group(1)
    return f"{package}.{service}"


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(container: dict, configmaps: dict, problems: list[str]) -> dict[str, str]:
    env = {}
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        if name not in configmaps:
            problems.append(f"container {container['name']}: ConfigMap {name} is not rendered")
            continue
        env.update(configmaps[name])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "<from field>")
    return env


def check(objects: list[dict]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}

    (deploy,) = by_kind["Deployment"]
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (server,) = spec["containers"]
    env = env_of(server, configmaps, problems)

    replicas = deploy["spec"].get("replicas", 1)
    index = env.get("EXPRESSCACHE_INDEX", "")
    if replicas > 1 and not index.startswith("dynamodb://"):
        problems.append(f"{replicas} replicas need a shared index (dynamodb://), not {index!r}")

    grace = seconds(env.get("EXPRESSCACHE_SHUTDOWN_GRACE", "30s"))
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    period = spec.get("terminationGracePeriodSeconds", 30)
    if period <= pre_stop + grace:
        problems.append(
            f"terminationGracePeriodSeconds {period} must exceed preStop {pre_stop}s + shutdown grace {grace:g}s"
        )

    ports = {p["name"]: p["containerPort"] for p in server.get("ports", [])}
    listen = next((a.split("=", 1)[1] for a in server.get("args", []) if a.startswith("--listen=")),
                  env.get("EXPRESSCACHE_LISTEN", "127.0.0.1:50051"))
    listen_port = int(listen.rsplit(":", 1)[1])
    if not listen.startswith("0.0.0.0:") and not listen.startswith("[::]:"):
        problems.append(f"the server listens on {listen}: probes and the Service cannot reach it")
    if ports.get("grpc") != listen_port:
        problems.append(f"container port grpc {ports.get('grpc')} is not the listen port {listen_port}")
    cache_service = proto_service()
    want = {"readinessProbe": cache_service, "livenessProbe": "", "startupProbe": ""}
    for kind, service in want.items():
        probe = server.get(kind, {}).get("grpc")
        if probe is None:
            problems.append(f"{kind} is not a gRPC probe")
            continue
        if probe["port"] != listen_port:
            problems.append(f"{kind} probes port {probe['port']}, the server listens on {listen_port}")
        if probe.get("service", "") != service:
            problems.append(f"{kind} asks for service {probe.get('service', '')!r}, should be {service!r}")
    if "requests" not in server.get("resources", {}):
        problems.append("the server has no resource requests")

    (svc,) = by_kind["Service"]
    if not matches(svc["spec"]["selector"], labels):
        problems.append("the Service selects no server pod")
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
            problems.append(f"the Service targets port {p['targetPort']}, which the pod does not name")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, []):
            sel = o["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            if not matches(sel, labels):
                problems.append(f"{kind} {o['metadata']['name']} selects no server pod")

    sa_name = spec.get("serviceAccountName")
    sas = {s["metadata"]["name"]: s for s in by_kind.get("ServiceAccount", [])}
    if sa_name not in sas:
        problems.append(f"the pods run as ServiceAccount {sa_name!r}, which is not rendered")
    else:
        arn = sas[sa_name]["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
        if not re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+", arn):
            problems.append(f"ServiceAccount {sa_name} has no IRSA role ARN (eks.amazonaws.com/role-arn: {arn!r})")

    containers = [(deploy["metadata"]["name"], server, env)]
    for cj in by_kind.get("CronJob", []):
        job = cj["spec"]["jobTemplate"]["spec"]
        for c in job["template"]["spec"]["containers"]:
            containers.append((cj["metadata"]["name"], c, env_of(c, configmaps, problems)))
            if c["image"] != server["image"]:
                problems.append(f"CronJob {cj['metadata']['name']} runs {c['image']}, the server {server['image']}")
        for rule in job.get("podFailurePolicy", {}).get("rules", []):
            codes = set(rule.get("onExitCodes", {}).get("values", []))
            if not codes <= CLI_EXIT_CODES:
                problems.append(f"CronJob {cj['metadata']['name']}: exit codes {sorted(codes - CLI_EXIT_CODES)} "
                                "are not the CLI's")
    for owner, c, cenv in containers:
        for arg in c.get("args", []) + c.get("command", []):
            for var in re.findall(r"\$\((\w+)\)", arg):
                if var not in cenv:
                    problems.append(f"{owner}/{c['name']}: $({var}) in {arg!r} is not defined")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--probes", action="store_true")
    args = ap.parse_args()
    objects = [o for o in yaml.safe_load_all(args.rendered.read_text()) if o]
    if args.probes:
        (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
        (server,) = deploy["spec"]["template"]["spec"]["containers"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            grpc = server[kind]["grpc"]
            print(kind, grpc["port"], grpc.get("service", ""))
        return 0
    problems = check(objects)
    for p in problems:
        print(f"{args.rendered}: {p}", file=sys.stderr)
    if not problems:
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        print(f"{args.rendered.name}: {len(objects)} objects fit together ({kinds})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
