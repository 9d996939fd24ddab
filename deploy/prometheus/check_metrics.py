"""The alert rules and the Grafana dashboard against the server's metrics.

The metric names, their types and the label values the server can give
come from its code (server/src/metrics.rs: `pub const X: &str = "..."` and
the describe_counter!/describe_gauge!/describe_histogram! calls; label
values: string literals of server/src). Every PromQL expression of
deploy/prometheus/alerts.yml and of deploy/grafana/expresscache.json
(panels and template variables) is read, and the check fails when:

- it names a metric the server does not export (a histogram only as
  NAME_bucket, NAME_sum, NAME_count; the targets' own `up` is allowed);
- it rates a gauge, reads a counter without rate()/increase(), or takes a
  quantile of anything but a histogram's buckets;
- a label matcher names a label the server never sets (nor a target label
  Prometheus adds), or a value that is no string literal of the server's
  code (a renamed outcome or operation);
- an alert lacks `for`, a severity, a summary, a description or a runbook
  link to a heading of deploy/README.md;
- the dashboard misses a metric the server exports, or a panel does not
  use the `datasource` template variable.

    python deploy/prometheus/check_metrics.py                 # static
    python deploy/prometheus/check_metrics.py --scrape FILE   # also a real /metrics
    python deploy/prometheus/check_metrics.py --self-test

--scrape reads a text exposition of a server that has run warms (deploy/test.sh
takes it from a live server): every metric the rules and the dashboard use
must be in it, but for those the server only emits after an event a
healthy run need not have (ON_EVENT), and each selector's labels must be
labels that metric really has.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS_RS = ROOT / "server/src/metrics.rs"
SERVER_SRC = ROOT / "server/src"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/expresscache.json"
RUNBOOK = ROOT / "deploy/README.md"
RUNBOOK_URL = "https://github.com/expresscache/expresscache/blob/main/deploy/README.md#"

# Series Prometheus itself makes for every target.
TARGET_SERIES = {"up"}
# Labels a scrape adds (job, instance) or the runbook's relabelling and the
# Prometheus operator do (namespace, pod, service, endpoint, container).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
SEVERITIES = {"critical", "warning", "info"}
# Emitted only after their first event, which a healthy server's warms need
# not cause: no retry, no throttling, no index error, no shared copy, no
# Evict call, no warm joining another; or only by a DynamoDB index (its
# adaptive limit of requests in flight). (Gauges are set to zero when the
# endpoint starts.)
ON_EVENT = {
    "expresscache_objects_shared_total",
    "expresscache_copy_retries_total",
    "expresscache_throttle_events_total",
    "expresscache_index_errors_total",
    "expresscache_evictions_total",
    "expresscache_warms_joined_total",
    "expresscache_warms_fresh_total",
    "expresscache_index_busy_total",
    "expresscache_index_concurrency_limit",
}

RATE_FUNCS = {"rate", "irate", "increase"}
COUNTER_FUNCS = RATE_FUNCS | {"resets", "absent", "absent_over_time", "present_over_time"}
GAUGE_FORBIDDEN = RATE_FUNCS | {"resets"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "atan2", "inf", "nan"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
# The labels the server puts on its metrics (server/src: `"label" => ...`
# in the metrics! macros, the index decorator's operation and backend),
# and the histograms' le.
SERVER_LABELS = {"outcome", "operation", "backend", "reason", "bucket", "le"}


# --- what the server exports ----------------------------------------------------

@dataclass
class Exported:
    kinds: dict[str, str]  # metric name -> counter | gauge | histogram
    literals: set[str]     # string literals of the server's code

    def series(self) -> dict[str, tuple[str, str]]:
        """Every series name an expression may use -> (metric, kind)."""
        out = {}
        for name, kind in self.kinds.items():
            if kind == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    out[name + suffix] = (name, kind + suffix)
            else:
                out[name] = (name, kind)
        return out


def exported(metrics_rs: Path = METRICS_RS, src: Path = SERVER_SRC) -> Exported:
    text = metrics_rs.read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', text))
    kinds = {}
    # The server describes its metrics from one table of
    # `(Kind::Counter, NAME, unit, help)` rows (a `describe_*!(NAME, ...)`
    # call is read the same way).
    described = re.findall(r"describe_(counter|gauge|histogram)!\(\s*([A-Z]\w+)", text)
    described += [(k.lower(), c) for k, c in re.findall(r"\(\s*Kind::(Counter|Gauge|Histogram),\s*(\w+),", text)]
    for kind, const in described:
        if const not in consts:
            raise SystemExit(f"{metrics_rs}: {kind} {const} names no `pub const`")
        kinds[consts[const]] = kind
    undescribed = set(consts.values()) - set(kinds)
    if undescribed:
        raise SystemExit(f"{metrics_rs}: no describe_*! (so no type) for {sorted(undescribed)}")
    literals = set()
    for rs in src.rglob("*.rs"):
        literals |= set(re.findall(r'"([a-z][a-z0-9_]*)"', rs.read_text()))
    return Exported(kinds, literals)


# --- a small PromQL reader ------------------------------------------------------

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
""", re.X)


def tokens(expr: str) -> list[tuple[str, str]]:
    # Grafana's variables: $__rate_interval in a range, $var in strings.
    expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]  # (label, op, value)
    funcs: list[str] = field(default_factory=list)  # enclosing calls, innermost first


def skip_label_list(toks: list[tuple[str, str]], i: int) -> int:
    """toks[i] is `by`, `without`, `on`, ...: the index after its ( ... )."""
    if i + 1 < len(toks) and toks[i + 1][1] == "(":
        return next(j for j in range(i + 2, len(toks)) if toks[j][1] == ")") + 1
    return i + 1  # group_left without a list


def selectors(expr: str) -> list[Selector]:
    toks = tokens(expr)
    out: list[Selector] = []
    stack: list[str] = []  # one entry per open parenthesis: the call's name or ""
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in LABEL_LISTS:
            i = skip_label_list(toks, i)
        elif kind == "ident" and text in AGGREGATIONS and nxt in ("by", "without"):
            # sum by (x) (...): the call's parenthesis comes after the list
            i = skip_label_list(toks, i + 1)
            stack.append(text)
            i += 1
        elif kind == "ident" and nxt == "(" and text.lower() not in KEYWORDS:
            stack.append(text)
            i += 2
        elif text == "(":
            stack.append("")
            i += 1
        elif text == ")":
            stack.pop()
            i += 1
        elif kind == "ident" and text.lower() not in KEYWORDS:
            sel = Selector(text, [], [f for f in reversed(stack) if f])
            i += 1
            if i < len(toks) and toks[i][1] == "{":
                i = read_matchers(toks, i + 1, sel.matchers)
            out.append(sel)
        elif text == "{":
            raise ValueError("a selector without a metric name is not checked: name the metric")
        else:
            i += 1
    if stack:
        raise ValueError("unbalanced parentheses")
    return out


def read_matchers(toks: list[tuple[str, str]], i: int, into: list[tuple[str, str, str]]) -> int:
    while toks[i][1] != "}":
        label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
        into.append((label, op, value[1:-1]))
        i += 3
        if toks[i][1] == ",":
            i += 1
    return i + 1


def literal_values(op: str, value: str) -> list[str]:
    """The label values a matcher names, when it names them outright."""
    if "$" in value:  # a Grafana variable
        return []
    if op in ("=", "!="):
        return [value] if value else []
    if re.fullmatch(r"[a-z0-9_]+(\|[a-z0-9_]+)*", value):
        return value.split("|")
    return []


def check_expr(where: str, expr: str, exp: Exported, used: set[str], templating: bool = False) -> list[str]:
    problems = []
    try:
        sels = selectors(expr)
    except (ValueError, IndexError) as e:
        return [f"{where}: cannot read {expr!r}: {e}"]
    series = exp.series()
    for s in sels:
        if s.metric in TARGET_SERIES:
            pass
        elif s.metric not in series:
            hint = " (a histogram: use _bucket, _sum or _count)" if s.metric in exp.kinds else ""
            problems.append(f"{where}: {s.metric} is not a metric the server exports{hint}")
            continue
        else:
            metric, kind = series[s.metric]
            used.add(metric)
            inner = s.funcs[0] if s.funcs else None
            if not templating:
                if kind in ("counter", "histogram_count", "histogram_sum", "histogram_bucket") \
                        and inner not in COUNTER_FUNCS:
                    problems.append(f"{where}: {s.metric} is a counter: read it through rate() or increase()")
                if kind == "gauge" and inner in GAUGE_FORBIDDEN:
                    problems.append(f"{where}: {s.metric} is a gauge: {inner}() of it means nothing")
                if kind == "histogram_bucket" and "histogram_quantile" not in s.funcs:
                    problems.append(f"{where}: {s.metric} outside histogram_quantile()")
            if "histogram_quantile" in s.funcs and kind != "histogram_bucket":
                problems.append(f"{where}: histogram_quantile() of {s.metric}, not of a histogram's _bucket")
        for label, op, value in s.matchers:
            if label in TARGET_LABELS:
                continue
            if label not in SERVER_LABELS:
                problems.append(f"{where}: {s.metric} has no label {label!r}")
                continue
            for v in literal_values(op, value):
                if v not in exp.literals:
                    problems.append(f"{where}: {s.metric}{{{label}{op}\"{value}\"}}: {v!r} is no label value "
                                    "the server's code has")
    return problems


# --- the artifacts --------------------------------------------------------------

def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return anchors


def alert_exprs(alerts: Path, runbook: Path, exp: Exported, used: set[str]) -> tuple[list[str], list[str]]:
    problems, exprs = [], []
    anchors = github_anchors(runbook.read_text())
    doc = yaml.safe_load(alerts.read_text())
    names = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            where = f"{alerts.name}: {name}"
            exprs.append(rule["expr"])
            problems += check_expr(where, rule["expr"], exp, used)
            if "alert" not in rule:
                continue
            if name in names:
                problems.append(f"{where}: a second alert of that name")
            names.add(name)
            if "for" not in rule:
                problems.append(f"{where}: no `for:` (one bad scrape would page)")
            if rule.get("labels", {}).get("severity") not in SEVERITIES:
                problems.append(f"{where}: severity {rule.get('labels', {}).get('severity')!r}, not one of {sorted(SEVERITIES)}")
            notes = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    problems.append(f"{where}: no {key} annotation")
            url = notes.get("runbook_url", "")
            if url and (not url.startswith(RUNBOOK_URL) or url[len(RUNBOOK_URL):] not in anchors):
                problems.append(f"{where}: runbook_url {url} is no heading of {runbook.relative_to(ROOT)}")
    return problems, exprs


def panels_of(dash: dict):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def dashboard_exprs(path: Path, exp: Exported, used: set[str]) -> tuple[list[str], list[str]]:
    problems, exprs = [], []
    dash = json.loads(path.read_text())
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource", {})
    if ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.append(f"{path.name}: no `datasource` template variable of Prometheus data sources")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"{path.name}: schemaVersion {dash.get('schemaVersion')}, expected 36 or later")
    for v in variables.values():
        if v.get("type") != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query)
        q = m.group(1) if m else query
        exprs.append(q)
        problems += check_expr(f"{path.name}: variable {v['name']}", q, exp, used, templating=True)
    ids = set()
    for p in panels_of(dash):
        where = f"{path.name}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        if p["type"] == "row":
            continue
        if "gridPos" not in p:
            problems.append(f"{where}: no gridPos")
        if not p.get("targets"):
            problems.append(f"{where}: no queries")
        for t in [p] + p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: data source {t.get('datasource')}, not the ${{datasource}} variable")
        for t in p.get("targets", []):
            exprs.append(t["expr"])
            problems += check_expr(f"{where} {t.get('refId')}", t["expr"], exp, used)
    return problems, exprs


def check(alerts: Path = ALERTS, dashboard: Path = DASHBOARD, runbook: Path = RUNBOOK,
          exp: Exported | None = None) -> tuple[list[str], list[str]]:
    exp = exp or exported()
    in_alerts: set[str] = set()
    in_dash: set[str] = set()
    p1, e1 = alert_exprs(alerts, runbook, exp, in_alerts)
    p2, e2 = dashboard_exprs(dashboard, exp, in_dash)
    problems = p1 + p2
    for name in sorted(set(exp.kinds) - in_dash):
        problems.append(f"{dashboard.name}: no panel shows {name}")
    return problems, e1 + e2


# --- a real scrape --------------------------------------------------------------

def parse_exposition(text: str) -> dict[str, set[str]]:
    """Series name -> the label names its samples carry."""
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s", line)
        if not m:
            raise SystemExit(f"cannot read the exposition line {line!r}")
        labels = set(re.findall(r'(\w+)="', m.group(2) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


def check_scrape(scrape: Path, exprs: list[str], exp: Exported) -> tuple[list[str], list[str]]:
    scraped = parse_exposition(scrape.read_text())
    problems, notes = [], []
    series = exp.series()
    wanted = {}
    for e in exprs:
        for s in selectors(e):
            if s.metric in series:
                wanted.setdefault(s.metric, set()).update(l for l, _, _ in s.matchers)
    for name, labels in sorted(wanted.items()):
        metric = series[name][0]
        if name not in scraped:
            if metric in ON_EVENT:
                notes.append(f"not in the scrape (emitted on its first event): {name}")
            else:
                problems.append(f"{scrape.name}: {name} is used by the rules or the dashboard but not in the scrape")
            continue
        extra = labels - TARGET_LABELS - scraped[name]
        if extra:
            problems.append(f"{scrape.name}: the selectors of {name} use labels {sorted(extra)}, "
                            f"its series have {sorted(scraped[name])}")
    ours = {n for n in scraped if n.startswith("expresscache_")}
    if unknown := ours - set(series):
        problems.append(f"{scrape.name}: the server exports {sorted(unknown)}, which metrics.rs does not declare")
    notes.append(f"{len(wanted)} series names used, {len(set(wanted) & set(scraped))} in the scrape "
                 f"of {len(ours)} expresscache series names")
    return problems, notes


# --- self-test ------------------------------------------------------------------

def self_test() -> None:
    exp = exported()
    real_alerts, real_dash = ALERTS.read_text(), DASHBOARD.read_text()
    mutations = [
        ("alerts", "expresscache_sweep_leases_stuck) > 0", "expresscache_sweep_leases_stuck_total) > 0",
         "not a metric the server exports"),
        ("alerts", 'outcome=~"failed|partially_failed"', 'outcome=~"failed|partial_failure"',
         "no label value"),
        ("alerts", "rate(expresscache_index_errors_total[5m])", "rate(expresscache_operations_queued[5m])",
         "is a gauge"),
        ("alerts", "#expresscachesweepfailing", "#expresscache-sweep-failing", "no heading"),
        ("alerts", "expresscache_s3_request_duration_seconds_bucket{operation",
         "expresscache_s3_request_duration_seconds_bucket{verb", "has no label"),
        ("dashboard", "sum(rate(expresscache_objects_copied_total", "sum((expresscache_objects_copied_total",
         "read it through rate()"),
        ("dashboard", "expresscache_listed_bytes_total", "expresscache_bytes_listed",
         "no panel shows expresscache_listed_bytes_total"),
        ("dashboard", '"uid": "${datasource}"', '"uid": "prometheus"', "not the ${datasource} variable"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        alerts, dash = Path(tmp) / "alerts.yml", Path(tmp) / "expresscache.json"
        alerts.write_text(real_alerts)
        dash.write_text(real_dash)
        problems, _ = check(alerts, dash, exp=exp)
        if problems:
            raise SystemExit("self-test: the real files fail: " + "; ".join(problems))
        for target, old, new, expect in mutations:
            if old not in (real_alerts if target == "alerts" else real_dash):
                raise SystemExit(f"self-test: {old!r} is not in the {target} any more: update the self-test")
            alerts.write_text(real_alerts.replace(old, new, 1) if target == "alerts" else real_alerts)
            dash.write_text(real_dash.replace(old, new, 1) if target == "dashboard" else real_dash)
            problems, _ = check(alerts, dash, exp=exp)
            if not any(expect in p for p in problems):
                raise SystemExit(f"self-test: {target} with {new!r} for {old!r} was not caught "
                                 f"(expected {expect!r}, got {problems})")
            print(f"caught: {target}: {new!r} -> {next(p for p in problems if expect in p)}")
    print(f"self-test passed: {len(mutations)} drifts caught")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrape", type=Path, help="a /metrics exposition to check the names against")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    exp = exported()
    problems, exprs = check(exp=exp)
    notes = []
    if args.scrape:
        p, notes = check_scrape(args.scrape, exprs, exp)
        problems += p
    for p in problems:
        print(p, file=sys.stderr)
    for n in notes:
        print(n)
    if not problems:
        print(f"{len(exprs)} expressions of {ALERTS.relative_to(ROOT)} and {DASHBOARD.relative_to(ROOT)} "
              f"use only the {len(exp.kinds)} metrics of {METRICS_RS.relative_to(ROOT)}, as they are typed; "
              "the dashboard shows them all")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
