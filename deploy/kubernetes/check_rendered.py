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
  really has;
- a CronJob's --files-from names a file of a ConfigMap mounted in its pod,
  and it does not also pass --prefix (a warm takes one or the other);
- with --cli, each CronJob's command line (its $(VAR)s resolved as the
  kubelet would, its ConfigMap volumes written to a scratch directory) is
  run through the real CLI against an endpoint that refuses connections:
  exit 5 (unreachable) proves the CLI accepted every flag and value and
  the request passed its checks, which come before connecting;
- metrics: the port of --metrics-listen is the container port `metrics`,
  the prometheus.io/port annotation and the port of a Service selecting
  the pods, the annotations name the path the server serves (/metrics),
  and a NetworkPolicy rule admits every port a Service exposes;
- a ServiceMonitor (a CRD: no API schema to validate it against) is
  checked by structure: known fields only, its selector matches a Service
  of its namespace that names the endpoint's port, path /metrics, and its
  job label is the job deploy/prometheus/alerts.yml selects.

    python check_rendered.py RENDERED.yaml [--probes] [--cli PATH]

--probes prints the gRPC probes as lines `KIND PORT SERVICE` instead, for
deploy/test.sh to send them to a real server.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6}  # client/src/cli/exit.rs, README
CLI_UNREACHABLE = 5  # the CLI's exit status when no endpoint answers
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
METRICS_PATH = "/metrics"  # server/src/metrics.rs serves only this path

# The ServiceMonitor fields this checker knows (monitoring.coreos.com/v1);
# anything else is most likely a typo the operator would silently ignore.
SERVICEMONITOR_SPEC = {
    "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector", "namespaceSelector",
    "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "attachMetadata", "scrapeProtocols", "scrapeClass", "bodySizeLimit", "keepDroppedTargets",
    "fallbackScrapeProtocol", "selectorMechanism", "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor", "scrapeClassicHistograms", "convertClassicHistogramsToNHCB",
}
SERVICEMONITOR_ENDPOINT = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "noProxy", "proxyFromEnvironment", "proxyConnectHeader", "followRedirects",
    "enableHttp2", "filterRunning",
}


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

    services = by_kind.get("Service", [])
    exposed: set[str] = set()  # container port names some Service targets
    names_by_port = {v: k for k, v in ports.items()}
    for svc in services:
        name = svc["metadata"]["name"]
        if not matches(svc["spec"]["selector"], labels):
            problems.append(f"the Service {name} selects no server pod")
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if target not in ports and target not in ports.values():
                problems.append(f"the Service {name} targets port {target}, which the pod does not name")
            else:
                exposed.add(target if target in ports else names_by_port[target])
    if "grpc" not in exposed:
        problems.append("no Service exposes the gRPC port")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, []):
            sel = o["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            if not matches(sel, labels):
                problems.append(f"{kind} {o['metadata']['name']} selects no server pod")
    problems += check_ingress(by_kind.get("NetworkPolicy", []), exposed, ports)
    problems += check_metrics(server, env, pod, ports, services)
    for sm in by_kind.get("ServiceMonitor", []):
        problems += check_servicemonitor(sm, services)

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
            problems += check_key_list(cj["metadata"]["name"], c, job["template"]["spec"], configmaps)
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


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values of `--flag=V` (and `--flag V`) in a container's args."""
    out = []
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
        elif a == flag and i + 1 < len(args):
            out.append(args[i + 1])
    return out


def configmap_files(volume: dict, configmaps: dict) -> dict[str, str] | None:
    """The files a ConfigMap volume shows (relative path -> content), or
    None when its ConfigMap is not rendered."""
    ref = volume["configMap"]
    data = configmaps.get(ref["name"])
    if data is None:
        return None
    if "items" in ref:
        return {i["path"]: data[i["key"]] for i in ref["items"] if i["key"] in data}
    return dict(data)


def mounted_files(container: dict, pod_spec: dict, configmaps: dict, problems: list[str],
                  owner: str) -> dict[str, str]:
    """Every file a container sees through its ConfigMap volumes: absolute
    path -> content."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    files = {}
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"])
        if vol is None:
            problems.append(f"{owner}/{container['name']}: volumeMount {m['name']} has no volume")
            continue
        if "configMap" not in vol:
            continue
        shown = configmap_files(vol, configmaps)
        if shown is None:
            problems.append(f"{owner}/{container['name']}: volume {m['name']} mounts ConfigMap "
                            f"{vol['configMap']['name']}, which is not rendered")
            continue
        mount = m["mountPath"].rstrip("/")
        if "subPath" in m:
            if m["subPath"] in shown:
                files[mount] = shown[m["subPath"]]
        else:
            files.update({f"{mount}/{rel}": text for rel, text in shown.items()})
    return files


def check_key_list(owner: str, c: dict, pod_spec: dict, configmaps: dict) -> list[str]:
    """--files-from names a file the pod mounts from a ConfigMap, and comes
    without --prefix."""
    problems: list[str] = []
    args = c.get("args", [])
    lists = flag_values(args, "--files-from")
    if not lists:
        return problems
    if flag_values(args, "--prefix"):
        problems.append(f"{owner}/{c['name']}: --files-from and --prefix together: the CLI takes one or the other")
    files = mounted_files(c, pod_spec, configmaps, problems, owner)
    for path in lists:
        if path not in files:
            problems.append(f"{owner}/{c['name']}: --files-from={path} is no file of a mounted ConfigMap "
                            f"(mounted: {sorted(files) or 'none'})")
        elif not any(line.strip() and not line.strip().startswith("#") for line in files[path].splitlines()):
            problems.append(f"{owner}/{c['name']}: {path} lists no key")
    return problems


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined variables replaced, $$ an
    escaped $, anything else left as written."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\((\w+)\)", sub, arg)


def run_cronjobs(objects: list[dict], cli: str) -> list[str]:
    """Each CronJob's `expresscache` command line, as its pod would run it,
    through the real CLI at an endpoint that refuses connections: the CLI
    checks its flags, their values and the request before it connects, so
    exit 5 means all of that passed."""
    problems: list[str] = []
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in objects if c["kind"] == "ConfigMap"}
    # A port bound but not listening: connections to it are refused.
    refuse = socket.socket()
    refuse.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{refuse.getsockname()[1]}"
    try:
        for cj in (o for o in objects if o["kind"] == "CronJob"):
            name = cj["metadata"]["name"]
            pod_spec = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            for c in pod_spec["containers"]:
                argv = c.get("command", []) + c.get("args", [])
                if not argv or Path(argv[0]).name != "expresscache":
                    continue
                env = env_of(c, configmaps, problems)
                # fieldRef values: the Job's name, as the CronJob controller makes it.
                env = {k: (f"{name}-29000000" if v == "<from field>" else v) for k, v in env.items()}
                with tempfile.TemporaryDirectory() as scratch:
                    files = mounted_files(c, pod_spec, configmaps, problems, name)
                    local = {}
                    for i, (path, text) in enumerate(sorted(files.items())):
                        local[path] = Path(scratch, str(i), Path(path).name)
                        local[path].parent.mkdir()
                        local[path].write_text(text)
                    # As the pod runs it; then with the mounted files' local copies.
                    pod_args = [expand(a, env) for a in argv[1:]]
                    if not flag_values(pod_args, "--reconnect-attempts"):
                        pod_args.append("--reconnect-attempts=0")
                    args = []
                    for a in pod_args:
                        for path, there in local.items():
                            a = a.replace(path, str(there))
                        args.append(a)
                    run_env = {k: v for k, v in os.environ.items() if not k.startswith("EXPRESSCACHE_")}
                    run_env.update(env)
                    run_env["EXPRESSCACHE_ENDPOINT"] = endpoint
                    shown = shlex.join(["expresscache"] + pod_args)
                    r = subprocess.run([cli] + args, env=run_env, capture_output=True, text=True, timeout=60)
                    if r.returncode != CLI_UNREACHABLE:
                        problems.append(f"CronJob {name}/{c['name']}: `{shown}` exited {r.returncode}, not "
                                        f"{CLI_UNREACHABLE} (unreachable): {r.stderr.strip()}")
                    else:
                        print(f"CronJob {name}/{c['name']}: the CLI accepts `{shown}` "
                              f"(exit {CLI_UNREACHABLE} at a refusing endpoint)")
    finally:
        refuse.close()
    return problems


def check_ingress(policies: list[dict], exposed: set[str], ports: dict[str, int]) -> list[str]:
    """Every port a Service exposes is admitted by some ingress rule (when
    a NetworkPolicy restricts ingress at all)."""
    problems = []
    restricting = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not restricting:
        return problems
    for name in sorted(exposed):
        admitted = False
        for pol in restricting:
            for rule in pol["spec"].get("ingress", []):
                rule_ports = rule.get("ports")
                if not rule_ports or any(rp.get("port") in (name, ports[name]) for rp in rule_ports):
                    admitted = True
        if not admitted:
            problems.append(f"no NetworkPolicy ingress rule admits port {name}: its Service cannot reach it")
    return problems


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def check_metrics(server: dict, env: dict, pod: dict, ports: dict[str, int], services: list[dict]) -> list[str]:
    """--metrics-listen, the container port, the scrape annotations and the
    Services all name the same port."""
    problems = []
    addr = next((a.split("=", 1)[1] for a in server.get("args", []) if a.startswith("--metrics-listen=")),
                env.get("EXPRESSCACHE_METRICS_LISTEN"))
    if addr is None:
        if "metrics" in ports:
            problems.append("container port metrics is declared but the server has no --metrics-listen")
        return problems
    port = listen_port(addr)
    if not addr.startswith("0.0.0.0:") and not addr.startswith("[::]:"):
        problems.append(f"metrics listen on {addr}: Prometheus cannot reach them")
    if ports.get("metrics") != port:
        problems.append(f"container port metrics {ports.get('metrics')} is not the --metrics-listen port {port}")
    notes = pod["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") != "true":
        problems.append("the pod template lacks the annotation prometheus.io/scrape: \"true\"")
    if notes.get("prometheus.io/port") != str(port):
        problems.append(f"annotation prometheus.io/port {notes.get('prometheus.io/port')!r} is not the metrics port {port}")
    if notes.get("prometheus.io/path", METRICS_PATH) != METRICS_PATH:
        problems.append(f"annotation prometheus.io/path {notes['prometheus.io/path']!r}: the server serves {METRICS_PATH}")
    svc_ports = [(s["metadata"]["name"], p) for s in services for p in s["spec"]["ports"]
                 if p.get("targetPort") in ("metrics", port)]
    if not svc_ports:
        problems.append("no Service exposes the metrics port")
    for name, p in svc_ports:
        if p["port"] != port or p.get("name") != "metrics":
            problems.append(f"Service {name} exposes the metrics as {p.get('name')}:{p['port']}, "
                            f"not metrics:{port}")
    return problems


def alerts_job() -> str:
    """The one job deploy/prometheus/alerts.yml selects targets by."""
    jobs = set(re.findall(r'\bjob\s*=\s*"([^"]*)"', ALERTS.read_text()))
    if len(jobs) != 1:
        raise SystemExit(f"{ALERTS}: expected one job=\"...\" selector value, found {sorted(jobs)}")
    return jobs.pop()


def check_servicemonitor(sm: dict, services: list[dict]) -> list[str]:
    name = f"ServiceMonitor {sm['metadata']['name']}"
    problems = []
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{name}: apiVersion {sm.get('apiVersion')}, not monitoring.coreos.com/v1")
    if set(sm) - {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"{name}: unknown top-level fields {sorted(set(sm) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
    spec = sm.get("spec", {})
    if unknown := set(spec) - SERVICEMONITOR_SPEC:
        problems.append(f"{name}: unknown spec fields {sorted(unknown)}")
    namespace = sm["metadata"].get("namespace")
    ns_sel = spec.get("namespaceSelector", {})
    def in_scope(svc: dict) -> bool:
        ns = svc["metadata"].get("namespace")
        if ns_sel.get("any"):
            return True
        if "matchNames" in ns_sel:
            return ns in ns_sel["matchNames"]
        return ns == namespace
    selector = spec.get("selector", {})
    if set(selector) - {"matchLabels"}:
        problems.append(f"{name}: only matchLabels selectors are checked here, got {sorted(selector)}")
    selected = [s for s in services if in_scope(s) and matches(selector.get("matchLabels", {}), s["metadata"].get("labels", {}))]
    if not selected:
        return problems + [f"{name}: its selector {selector} matches no Service of namespace {namespace}"]
    endpoints = spec.get("endpoints", [])
    if not endpoints:
        problems.append(f"{name}: no endpoints")
    for i, ep in enumerate(endpoints):
        if unknown := set(ep) - SERVICEMONITOR_ENDPOINT:
            problems.append(f"{name}: endpoint {i}: unknown fields {sorted(unknown)}")
        for svc in selected:
            if ep.get("port") not in {p.get("name") for p in svc["spec"]["ports"]}:
                problems.append(f"{name}: endpoint port {ep.get('port')!r} is not a port name of Service "
                                f"{svc['metadata']['name']}")
        if ep.get("path", METRICS_PATH) != METRICS_PATH:
            problems.append(f"{name}: endpoint path {ep['path']!r}, the server serves {METRICS_PATH}")
        if ep.get("scheme", "http") != "http":
            problems.append(f"{name}: scheme {ep['scheme']}: the metrics endpoint is plain HTTP")
    job = alerts_job()
    for svc in selected:
        # Prometheus operator: the job is the value of the Service's label
        # named jobLabel, else the Service's name.
        actual = svc["metadata"].get("labels", {}).get(spec.get("jobLabel", ""), svc["metadata"]["name"])
        if actual != job:
            problems.append(f"{name}: Service {svc['metadata']['name']} is scraped as job {actual!r}, "
                            f"the alert rules ({ALERTS.relative_to(ROOT)}) select job {job!r}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--probes", action="store_true")
    ap.add_argument("--cli", metavar="PATH",
                    help="the expresscache CLI binary: also run each CronJob's command line through it")
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
    if args.cli:
        problems += run_cronjobs(objects, args.cli)
    problems = list(dict.fromkeys(problems))  # both passes may see the same
    for p in problems:
        print(f"{args.rendered}: {p}", file=sys.stderr)
    if not problems:
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        print(f"{args.rendered.name}: {len(objects)} objects fit together ({kinds})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
