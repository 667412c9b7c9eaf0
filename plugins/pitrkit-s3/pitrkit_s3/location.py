"""`S3Location`: what an `s3://` URL says, parsed and checked before any request.

`s3://bucket/prefix` names the archive; query parameters carry the settings an
S3-compatible store needs, so that the whole repository lives in pitrkit.toml (the
archive_command's environment is PostgreSQL's, not the DBA's shell):

    s3://bucket/prefix?endpoint=https://minio.example:9000&region=us-east-1&path_style=true

Without them botocore's own configuration applies (AWS_ENDPOINT_URL_S3, AWS_REGION,
the shared config file's `s3 = addressing_style = path`, ...).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

# Bucket names as S3 accepts them for new buckets (3-63 characters), plus the upper case
# and underscores some older buckets and S3-compatible stores allow.
_BUCKET_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,61}[a-zA-Z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SETTINGS = {"endpoint", "region", "path_style"}
_BOOLEANS = {"true": True, "false": False}


class S3Location(NamedTuple):
    bucket: str
    prefix: str  # "" or ends in "/"
    endpoint: str | None  # http(s)://host[:port], for an S3-compatible store; None: botocore's
    region: str | None
    path_style: bool  # bucket in the path (MinIO, Ceph) rather than in the host name


def parse_s3_url(url: str) -> S3Location:
    """The location of `s3://bucket[/prefix][?settings]`; ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError("expected s3://bucket/prefix")
    rest, _, query = url[len("s3://"):].partition("?")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError("the bucket is not a valid bucket name (s3://bucket/prefix; 3-63 letters, digits, '.', '-')")
    if "#" in prefix or "//" in prefix or "\\" in prefix:
        raise ValueError(f"the prefix {prefix[:200]!r} must be a plain path")
    prefix = prefix.strip("/")
    # The messages below name the setting, never repeat the URL: a mistyped one may hold
    # a credential (in the endpoint's user part), which must not reach stderr or a log.
    try:
        settings = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError("the settings after '?' must be name=value pairs joined by '&'") from None
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0][:40]!r} after '?' (known: endpoint, region, path_style)")
    endpoint = settings.get("endpoint")
    if endpoint is not None:
        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018  (raises ValueError for a port that is not one)
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.username or parts.password:
            raise ValueError("the endpoint setting must be http(s)://host[:port], without credentials")
    region = settings.get("region")
    if region is not None and not _REGION.fullmatch(region):
        raise ValueError(f"the region setting {region[:40]!r} is not a region name")
    path_style = settings.get("path_style", "false")
    if path_style not in _BOOLEANS:
        raise ValueError("the path_style setting must be true or false")
    return S3Location(bucket, prefix + "/" if prefix else "", endpoint, region, _BOOLEANS[path_style])
