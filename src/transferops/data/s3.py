"""Reading an ImageFolder tree from an ``s3://bucket/prefix`` (AWS or any S3-compatible store).

Credentials come from the environment (boto3's usual chain); ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` point boto3 at an S3-compatible endpoint. Listing is paginated and requests retry
with boto3's standard retry mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from transferops.errors import DataError

log = logging.getLogger(__name__)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b/")."""
    if not url.startswith("s3://"):
        raise DataError(f"{url}: expected an s3://bucket/prefix URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise DataError(f"{url}: expected an s3://bucket/prefix URL")
    return bucket, (prefix.rstrip("/") + "/") if prefix else ""


def client():
    """A boto3 S3 client honouring the endpoint variables, with bounded retries and timeouts."""
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    cfg = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def download_prefix(url: str, dest: Path) -> int:
    """Download every object under the prefix into ``dest`` (keys relative to the prefix); returns the count."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_url(url)
    s3 = client()
    count = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                if not rel.parts or ".." in rel.parts or obj["Key"].endswith("/"):
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
                count += 1
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise DataError(
            f"{url}: S3 request failed ({code}: {exc.response.get('Error', {}).get('Message', '')})"
        ) from None
    except BotoCoreError as exc:
        raise DataError(f"{url}: S3 unreachable ({exc})") from None
    if count == 0:
        raise DataError(f"{url}: no objects under this prefix (expected <prefix>/<class>/<image files>)")
    log.info("downloaded %d objects from %s", count, url)
    return count
