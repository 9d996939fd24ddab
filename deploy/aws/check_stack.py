"""Deploys deploy/aws/expresscache.yaml on moto's CloudFormation and reads
back what the intrinsic functions resolved to.

cfn-lint checks the template's shape; this runs it: every condition on (KMS
sources, IRSA, instance profile, alarm topic), then the managed policy's
document, the IRSA trust and the outputs are compared with what the
parameters ask for. moto's IAM also refuses a malformed policy document.
(moto keeps an `AWS::NoValue` list item as null where CloudFormation drops
it, so the variants with options off are covered by cfn-lint only.)

    python deploy/aws/check_stack.py --endpoint http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import boto3

ACCOUNT = "123456789012"  # moto's
ISSUER = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
PARAMS = {
    "TablePrefix": "stacktest",
    "SourceBucketArns": "arn:aws:s3:::genomics-raw,arn:aws:s3:::imaging-raw",
    "SourceObjectArns": "arn:aws:s3:::genomics-raw/runs/*,arn:aws:s3:::imaging-raw/*",
    "DirectoryBucketArns": f"arn:aws:s3express:us-east-1:{ACCOUNT}:bucket/genomics-cache--use1-az4--x-s3",
    "SourceKmsKeyArns": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "EksOidcIssuer": ISSUER,
    "KubernetesNamespace": "batch",
    "KubernetesServiceAccount": "cache",
    "CreateInstanceProfile": "true",
    "AlarmTopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:oncall",
    # Every optional part on (moto keeps AWS::NoValue in lists, so a false
    # condition's statements cannot be deployed there).
    "BatchWorkingBucket": "stacktest-work",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--template", type=Path, default=Path(__file__).resolve().parent / "expresscache.yaml")
    args = ap.parse_args()
    region = os.environ.get("AWS_REGION", "us-east-1")
    cf = boto3.client("cloudformation", endpoint_url=args.endpoint, region_name=region)
    iam = boto3.client("iam", endpoint_url=args.endpoint, region_name=region)

    cf.create_stack(
        StackName="expresscache",
        TemplateBody=args.template.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMS.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cf.describe_stacks(StackName="expresscache")["Stacks"][0]
    problems = []
    if stack["StackStatus"] != "CREATE_COMPLETE":
        problems.append(f"stack {stack['StackStatus']}: {stack.get('StackStatusReason')}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    policy_arn = outputs.get("ServerPolicyArn", "")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    doc = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    resources = {s["Sid"]: sorted(s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
                 for s in doc["Statement"]}
    table = f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/stacktest"
    want = {
        "ListSources": sorted(PARAMS["SourceBucketArns"].split(",")),
        "ReadSources": sorted(PARAMS["SourceObjectArns"].split(",")),
        "DirectoryBucketSessions": [PARAMS["DirectoryBucketArns"]],
        "IndexTables": sorted(f"{table}-{t}" for t in ("records", "leases", "operations")),
        "IndexQueries": [f"{table}-leases/index/by_expiry", f"{table}-operations/index/by_status"],
        "DecryptSources": [PARAMS["SourceKmsKeyArns"]],
    }
    for sid, arns in want.items():
        if resources.get(sid) != arns:
            problems.append(f"statement {sid} resolves to {resources.get(sid)}, expected {arns}")

    role = iam.get_role(RoleName=outputs.get("IrsaRoleArn", "/").rsplit("/", 1)[1])["Role"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    expect_sub = f"system:serviceaccount:{PARAMS['KubernetesNamespace']}:{PARAMS['KubernetesServiceAccount']}"
    if trust["Condition"]["StringEquals"].get(f"{ISSUER}:sub") != expect_sub:
        problems.append(f"IRSA trust condition is {trust['Condition']}, expected sub {expect_sub}")
    if trust["Principal"]["Federated"] != f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER}":
        problems.append(f"IRSA trust principal is {trust['Principal']}")
    if outputs.get("Index") != "dynamodb://stacktest":
        problems.append(f"output Index is {outputs.get('Index')}")
    if "InstanceProfileName" not in outputs:
        problems.append("no InstanceProfileName output with CreateInstanceProfile=true")

    for p in problems:
        print(f"STACK: {p}", file=sys.stderr)
    if not problems:
        print(f"stack CREATE_COMPLETE on moto; outputs {sorted(outputs)}; policy statements "
              f"{sorted(resources)} resolve to the parameters' ARNs; IRSA trusts {expect_sub}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
