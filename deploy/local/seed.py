"""Creates the quick start's buckets on a local S3 endpoint (moto).

A general-purpose source bucket with a small "dataset" (a few prefixes of
4 KiB objects, some with awkward names) and an empty directory bucket.
"""

import argparse
import concurrent.futures
import os

import boto3
from botocore.config import Config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--directory-bucket", required=True)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()

    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        # CreateBucket of a directory bucket is a regional call: do not ask
        # the bucket for an S3 Express session before it exists.
        config=Config(
            s3={"disable_s3_express_session_auth": True},
            max_pool_connections=32,
        ),
    )
    s3.create_bucket(Bucket=args.source)
    s3.create_bucket(
        Bucket=args.directory_bucket,
        CreateBucketConfiguration={
            "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
            "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"},
        },
    )

    days = ["2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26"]
    keys = [
        f"datasets/{days[i % len(days)]}/shard-{i:05d}.parquet" for i in range(args.objects)
    ]
    keys += [
        "datasets/2026-11-26/notes/read me.txt",
        "datasets/2026-11-26/notes/résumé (v2) + 'draft'.txt",
        "datasets/2026-11-26/notes/100% done.txt",
    ]
    body = os.urandom(args.size)

    def put(key: str) -> None:
        s3.put_object(Bucket=args.source, Key=key, Body=body)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    print(f"seeded s3://{args.source} with {len(keys)} objects of {args.size} B; "
          f"created directory bucket {args.directory_bucket}")


if __name__ == "__main__":
    main()
