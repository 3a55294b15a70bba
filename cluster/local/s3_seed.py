"""The local cluster's S3 bucket, and the MNIST files in it when this machine has them.

    python s3_seed.py --endpoint URL --bucket NAME [--mnist DIR]

Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), as for every S3 client.
Uploads only what is missing, so a second run costs two requests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MNIST_PREFIX = "datasets/mnist/"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--mnist", type=Path, help="a directory of MNIST IDX files (*-ubyte.gz)")
    args = p.parse_args(argv)

    import boto3

    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1")
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    if args.bucket not in existing:
        s3.create_bucket(Bucket=args.bucket)
    if args.mnist and args.mnist.is_dir():
        have = {o["Key"] for o in s3.list_objects_v2(Bucket=args.bucket, Prefix=MNIST_PREFIX).get("Contents", [])}
        files = sorted(args.mnist.glob("*-ubyte*"))
        for f in files:
            if MNIST_PREFIX + f.name not in have:
                s3.upload_file(str(f), args.bucket, MNIST_PREFIX + f.name)
        print(f"s3://{args.bucket}/{MNIST_PREFIX}: {len(files)} MNIST files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
