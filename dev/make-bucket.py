"""Creates the bucket of $PITRKIT_REPOSITORY (gs://bucket/prefix) in fake-gcs-server
($STORAGE_EMULATOR_HOST) unless it exists: the compose dev setup's stand-in for the
bucket an operator creates in Google Cloud before `pitrkit init`. Waits up to a minute
for the emulator to answer."""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEADLINE = 60.0


def main() -> int:
    url = urllib.parse.urlsplit(os.environ["PITRKIT_REPOSITORY"])
    emulator = os.environ["STORAGE_EMULATOR_HOST"].rstrip("/")
    if url.scheme != "gs" or not url.netloc:
        print(f"make-bucket: PITRKIT_REPOSITORY must be gs://bucket/prefix, not {url.geturl()!r}", file=sys.stderr)
        return 2
    bucket = url.netloc
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            urllib.request.urlopen(f"{emulator}/storage/v1/b/{urllib.parse.quote(bucket)}", timeout=5).close()
            return 0  # it exists
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                print(f"make-bucket: {emulator} answered {exc.code} for bucket {bucket}", file=sys.stderr)
                return 1
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"make-bucket: {emulator} does not answer: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    request = urllib.request.Request(f"{emulator}/storage/v1/b", method="POST",
                                     data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    print(f"make-bucket: created gs://{bucket} in {emulator}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
