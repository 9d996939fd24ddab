"""Buckets for deploy/test.sh on a local S3 endpoint (moto).

- SOURCE: datasets/2026-11-2{3,4}/ (40 small objects each), slow/
  (60 objects whose copies slow_proxy.py holds back, so a warm is
  still running when a test cancels it or stops the server), and keyed/
  (10 objects, of which a key list names some);
- CLASH: three keys of SOURCE's datasets/2026-11-23/ with other content, so
  warming them into the same directory bucket is a KeyClash (a partial
  failure);
- DIRECTORY: the directory bucket.

With --count it only prints how many objects the directory bucket holds
(what a teardown must bring to 0); with --keys PREFIX, the keys it holds
under PREFIX, one a line; with --lifecycle FILE it applies the runbook's
backstop lifecycle rules to it, as the AWS CLI would.
"""

import argparse
import concurrent.futures
import json
import os

import boto3
from botocore.config import Config


# The servers' default --max-ttl: an expiry sooner than that deletes
# objects under a lease that may still be live.
MAX_TTL_DAYS = 30


def apply_lifecycle(s3, bucket: str, path: str) -> None:
    """What `aws s3api put-bucket-lifecycle-configuration` sends; botocore
    checks the document against the S3 API model before it goes out."""
    with open(path) as f:
        config = json.load(f)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=config)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    for rule in rules:
        days = rule.get("Expiration", {}).get("Days")
        if days is not None and days <= MAX_TTL_DAYS:
            raise SystemExit(f"rule {rule['ID']} expires objects after {days} days, "
                             f"within the default --max-ttl of {MAX_TTL_DAYS} days")
        print(f"{bucket}: rule {rule['ID']} {rule['Status']}: "
              f"{json.dumps({k: v for k, v in rule.items() if k not in ('ID', 'Status')})}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--source")
    ap.add_argument("--clash")
    ap.add_argument("--directory-bucket", required=True)
    ap.add_argument("--count", action="store_true",
                    help="only print how many objects the directory bucket holds")
    ap.add_argument("--keys", metavar="PREFIX",
                    help="only print the directory bucket's keys under PREFIX")
    ap.add_argument("--lifecycle", metavar="FILE",
                    help="only apply this lifecycle configuration to the directory bucket and read it back")
    args = ap.parse_args()
    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        # A directory bucket's CreateBucket is regional: no session for it.
        config=Config(s3={"disable_s3_express_session_auth": True}, max_pool_connections=16),
    )
    if args.lifecycle:
        apply_lifecycle(s3, args.directory_bucket, args.lifecycle)
        return
    if args.keys is not None:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=args.directory_bucket, Prefix=args.keys)
        for page in pages:
            for o in page.get("Contents", []):
                print(o["Key"])
        return
    if args.count:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=args.directory_bucket)
        print(sum(len(p.get("Contents", [])) for p in pages))
        return
    s3.create_bucket(Bucket=args.source)
    s3.create_bucket(Bucket=args.clash)
    s3.create_bucket(
        Bucket=args.directory_bucket,
        CreateBucketConfiguration={
            "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
            "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"},
        },
    )
    puts = [(args.source, f"datasets/{day}/part-{i:03d}.bin", b"x" * 1024)
            for day in ("2026-11-23", "2026-11-24") for i in range(40)]
    puts += [(args.source, f"slow/part-{i:03d}.bin", b"s" * 1024) for i in range(60)]
    puts += [(args.source, f"keyed/part-{i:03d}.bin", b"k" * 1024) for i in range(10)]
    puts += [(args.clash, f"datasets/2026-11-23/part-{i:03d}.bin", b"other") for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: s3.put_object(Bucket=p[0], Key=p[1], Body=p[2]), puts))
    print(f"seeded {len(puts)} objects in {args.source} and {args.clash}; created {args.directory_bucket}")


if __name__ == "__main__":
    main()
