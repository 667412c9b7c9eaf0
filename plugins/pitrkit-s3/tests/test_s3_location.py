"""What an s3:// URL may say: the settings an S3-compatible store needs, and nothing
that could smuggle credentials or a path into the endpoint."""

from __future__ import annotations

import pytest
from pitrkit_s3.location import S3Location, parse_s3_url


@pytest.mark.parametrize("url, location", [
    ("s3://bucket", S3Location("bucket", "", None, None, False)),
    ("s3://bucket/", S3Location("bucket", "", None, None, False)),
    ("s3://my.bucket/a/b/", S3Location("my.bucket", "a/b/", None, None, False)),
    ("s3://bucket/db1?region=eu-west-1", S3Location("bucket", "db1/", None, "eu-west-1", False)),
    ("s3://pitrkit/db1?endpoint=https://minio.internal:9000&region=us-east-1&path_style=true",
     S3Location("pitrkit", "db1/", "https://minio.internal:9000", "us-east-1", True)),
    ("s3://bucket/p?endpoint=http://127.0.0.1:9000/&path_style=false",
     S3Location("bucket", "p/", "http://127.0.0.1:9000/", None, False)),
])
def test_urls_that_name_an_archive(url, location):
    assert parse_s3_url(url) == location


@pytest.mark.parametrize("url, complaint", [
    ("gs://bucket/p", "expected s3://"),
    ("s3://", "not a valid bucket name"),
    ("s3://ab/p", "not a valid bucket name"),
    ("s3://Not_A_Bucket!/p", "not a valid bucket name"),
    ("s3://a..b/p", "not a valid bucket name"),
    ("s3://bucket/a//b", "plain path"),
    ("s3://bucket/p#x", "plain path"),
    ("s3://bucket/p?endpoint=ftp://host", "endpoint setting must be"),
    ("s3://bucket/p?endpoint=https://user:secret@host", "without credentials"),
    ("s3://bucket/p?endpoint=https://host/path", "endpoint setting must be"),
    ("s3://AKIDEXAMPLE:wJalrXUtnFEMI@host/p", "not a valid bucket name"),
    ("s3://bucket/p?region=EU WEST", "not a region name"),
    ("s3://bucket/p?path_style=yes", "path_style setting must be"),
    ("s3://bucket/p?secret_key=x", "unknown setting 'secret_key'"),
    ("s3://bucket/p?region", "name=value pairs"),
])
def test_urls_refused(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_s3_url(url)


@pytest.mark.parametrize("url", ["s3://bucket/p?endpoint=https://AKIDEXAMPLE:wJalrXUtnFEMI@host",
                                 "s3://AKIDEXAMPLE:wJalrXUtnFEMI@host/p"])
def test_a_refusal_never_repeats_a_credential_in_the_url(url):
    with pytest.raises(ValueError) as refused:
        parse_s3_url(url)
    assert "wJalrXUtnFEMI" not in str(refused.value)
