# Warms the quick start's data: run deploy/local/quickstart.sh --keep, export what it prints.
import sys
from datetime import timedelta

from expresscache import Client, InvalidRequest, WarmRequest

client = Client()  # $EXPRESSCACHE_ENDPOINT (replicas: comma-separated), else 127.0.0.1:50051
request = WarmRequest(
    bucket="expresscache-demo-source",
    prefixes=["datasets/2026-11-26/"],
    directory_bucket="expresscache-demo--use1-az4--x-s3",
    ttl=timedelta(hours=2),
    request_id=sys.argv[1] if len(sys.argv) > 1 else None,  # e.g. the Slurm job id
)
try:  # reconnects and reattaches if the connection drops or the server restarts
    report = client.warm_and_wait(request, on_progress=lambda p: print(
        p.phase.name, p.counters.objects_copied, "of", p.counters.objects_to_copy, file=sys.stderr))
except InvalidRequest as e:
    sys.exit("\n".join(f"{v.field}: {v.description}" for v in e.field_violations))
c = report.counters
print(f"{report.outcome.name}: {c.objects_copied} copied, {c.objects_hit} hits")
sys.exit(0 if report.succeeded else 1)
