"""The DynamoDB tables of deploy/aws/expresscache.yaml against the server's.

On a local DynamoDB endpoint (moto):

1. `expresscache-server index create` makes the tables of one prefix, the
   way an operator without the stack would;
2. the template's AWS::DynamoDB::Table resources are created as written
   (CreateTable, UpdateTimeToLive, UpdateContinuousBackups: the same calls
   CloudFormation makes for those properties) under another prefix;
3. `expresscache-server index create` on the template's prefix must find
   nothing to do (its own check: keys, indexes, projections, TTL, PITR);
4. both sets are described and compared field by field (billing mode and
   extra indexes too, which the server's check does not look at).

    python deploy/aws/check_tables.py --endpoint http://127.0.0.1:PORT --server BIN
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_policy import Loader  # noqa: E402  (CloudFormation YAML tags)

import yaml  # noqa: E402


def template_tables(path: Path) -> dict[str, dict]:
    """Table resources of the template: suffix -> properties."""
    template = yaml.load(path.read_text(), Loader=Loader)
    tables = {}
    for logical_id, res in template["Resources"].items():
        if res["Type"] != "AWS::DynamoDB::Table":
            continue
        props = res["Properties"]
        name = props["TableName"]["Fn::Sub"]
        if not name.startswith("${TablePrefix}-"):
            raise SystemExit(f"{logical_id}: TableName must be ${{TablePrefix}}-SUFFIX, is {name}")
        tables[name.removeprefix("${TablePrefix}-")] = props
    return tables


def create_from_template(ddb, prefix: str, tables: dict[str, dict]) -> None:
    """What CloudFormation does with these properties, call by call."""
    for suffix, props in tables.items():
        name = f"{prefix}-{suffix}"
        args = {
            "TableName": name,
            "BillingMode": props["BillingMode"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
        }
        if "GlobalSecondaryIndexes" in props:
            args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        ddb.create_table(**args)
        if "TimeToLiveSpecification" in props:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=props["TimeToLiveSpecification"])
        pitr = props.get("PointInTimeRecoverySpecification", {})
        if pitr.get("PointInTimeRecoveryEnabled"):
            ddb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )


def shape(ddb, name: str) -> dict:
    """What matters of a table, comparable across prefixes."""
    t = ddb.describe_table(TableName=name)["Table"]
    gsis = []
    for g in t.get("GlobalSecondaryIndexes", []):
        projection = dict(g["Projection"])
        if "NonKeyAttributes" in projection:
            projection["NonKeyAttributes"] = sorted(projection["NonKeyAttributes"])
        gsis.append({"IndexName": g["IndexName"], "KeySchema": g["KeySchema"], "Projection": projection})
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    pitr = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    return {
        "KeySchema": t["KeySchema"],
        "AttributeDefinitions": sorted(t["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
        "BillingMode": t.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED"),
        "GlobalSecondaryIndexes": sorted(gsis, key=lambda g: g["IndexName"]),
        "TimeToLive": (ttl.get("AttributeName"), ttl.get("TimeToLiveStatus")),
        "PointInTimeRecovery": pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
    }


def index_create(server: str, prefix: str) -> str:
    out = subprocess.run(
        [server, "index", "create", "--index", f"dynamodb://{prefix}"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"`index create --index dynamodb://{prefix}` failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True, help="local DynamoDB endpoint (moto)")
    ap.add_argument("--server", required=True, help="path of expresscache-server")
    ap.add_argument("--template", type=Path, default=here / "expresscache.yaml")
    args = ap.parse_args()

    # The server finds the endpoint through the standard AWS chain.
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = args.endpoint
    ddb = boto3.client("dynamodb", endpoint_url=args.endpoint,
                       region_name=os.environ.get("AWS_REGION", "us-east-1"))
    problems = []

    said = index_create(args.server, "fromcode")
    code_tables = sorted(n.removeprefix("fromcode-") for n in ddb.list_tables()["TableNames"]
                         if n.startswith("fromcode-"))
    tables = template_tables(args.template)
    if sorted(tables) != code_tables:
        problems.append(f"the server makes tables {code_tables}, the template {sorted(tables)}")

    create_from_template(ddb, "fromtemplate", tables)
    said = index_create(args.server, "fromtemplate")
    if "nothing to do" not in said:
        problems.append("`index create` on the template's tables still had to change them:\n  "
                        + said.strip().replace("\n", "\n  "))

    for suffix in sorted(set(tables) & set(code_tables)):
        want, got = shape(ddb, f"fromcode-{suffix}"), shape(ddb, f"fromtemplate-{suffix}")
        for field in want:
            if want[field] != got[field]:
                problems.append(
                    f"table {suffix}: {field} differs\n  server:   {json.dumps(want[field])}\n"
                    f"  template: {json.dumps(got[field])}"
                )
    for p in problems:
        print(f"TABLE DRIFT: {p}", file=sys.stderr)
    if not problems:
        print(f"tables match the server's: {', '.join(code_tables)} (keys, attribute types, "
              "GSIs and projections, on-demand billing, TTL, PITR); `index create` found nothing to do")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
