"""Nubo end-to-end test function: a Python handler (run by awslambdaric) that uses the object
storage HTTP API on its worker's Runtime API endpoint with nothing but urllib.

`scenario` puts, gets (whole and by range), heads, lists and deletes objects under a prefix in
its bound bucket and returns what it saw. `big` streams an object of `mib` MiB up in 1 MiB
chunks and reads it back in chunks, returning the sha256 of both sides. `calls` makes the raw
requests the event lists, for the error cases.
"""

import hashlib
import json
import os
import random
import urllib.error
import urllib.parse
import urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/nubo/v1/obj"
# The API is on loopback: never send it through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CHUNK = 1024 * 1024


def request(method, path, body=None, headers=None):
    """One request to the object API: (status, lower-cased headers, body bytes)."""
    req = urllib.request.Request(API + path, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def key_path(bucket, key):
    """`/{bucket}/{key}` with the key percent-encoded, slashes included."""
    return "/" + bucket + "/" + urllib.parse.quote(key, safe="")


def scenario(event, context):
    """Exercises every operation on the bound bucket under `prefix`; returns what it saw."""
    bucket = event["bucket"]
    p = event["prefix"]
    seen = {}
    status, headers, body = request(
        "PUT",
        key_path(bucket, p + "notes/a b.txt"),
        b"hello objects",
        {"content-type": "text/plain", "x-nubo-meta-owner": "ann"},
    )
    seen["put"] = {"status": status, "etag": headers.get("etag"), "size": json.loads(body)["size"]}
    request("PUT", key_path(bucket, p + "notes/c"), b"c")
    request("PUT", key_path(bucket, p + "z"), b"z")

    status, headers, body = request("GET", key_path(bucket, p + "notes/a b.txt"))
    seen["get"] = {
        "status": status,
        "body": body.decode(),
        "content_type": headers.get("content-type"),
        "etag": headers.get("etag"),
        "owner": headers.get("x-nubo-meta-owner"),
        "has_last_modified": "last-modified" in headers,
    }
    status, headers, body = request(
        "GET", key_path(bucket, p + "notes/a b.txt"), headers={"range": "bytes=6-12"}
    )
    seen["range"] = {
        "status": status,
        "body": body.decode(),
        "content_range": headers.get("content-range"),
    }
    status, _, body = request("GET", key_path(bucket, p + "missing"))
    seen["get_missing"] = {"status": status, "error": json.loads(body)["error"]["code"]}
    seen["head"] = request("HEAD", key_path(bucket, p + "notes/c"))[0]

    query = urllib.parse.urlencode({"prefix": p, "delimiter": "/", "limit": 1})
    keys, prefixes, pages, after = [], [], 0, None
    while pages < 10:
        q = query + ("&" + urllib.parse.urlencode({"after": after}) if after else "")
        page = json.loads(request("GET", "/" + bucket + "?" + q)[2])
        keys += [o["key"] for o in page["objects"]]
        prefixes += page["common_prefixes"]
        pages += 1
        after = page.get("next")
        if not after:
            break
    seen["list"] = {"keys": keys, "prefixes": prefixes, "pages": pages}

    seen["delete"] = request("DELETE", key_path(bucket, p + "z"))[0]
    seen["head_deleted"] = request("HEAD", key_path(bucket, p + "z"))[0]
    return seen


def big(event, context):
    """Streams `mib` MiB of seeded random bytes to `key`, reads them back; both sha256s."""
    bucket, key, mib = event["bucket"], event["key"], event["mib"]
    rng = random.Random(event.get("seed", 7))
    sent = hashlib.sha256()

    def chunks():
        for _ in range(mib):
            chunk = rng.randbytes(CHUNK)
            sent.update(chunk)
            yield chunk

    req = urllib.request.Request(
        API + key_path(bucket, key),
        data=chunks(),
        method="PUT",
        headers={"content-length": str(mib * CHUNK), "content-type": "application/octet-stream"},
    )
    with OPENER.open(req, timeout=60) as resp:
        put_status = resp.status
        resp.read()

    got = hashlib.sha256()
    size = 0
    with OPENER.open(urllib.request.Request(API + key_path(bucket, key)), timeout=60) as resp:
        get_status = resp.status
        length = int(resp.headers["content-length"])
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            got.update(chunk)
            size += len(chunk)
    return {
        "put": put_status,
        "get": get_status,
        "content_length": length,
        "size": size,
        "sent_sha256": sent.hexdigest(),
        "got_sha256": got.hexdigest(),
    }


def calls(event, context):
    """Makes the requests in `event["calls"]` ({method, path, body?}) and returns each
    answer's status and body (JSON when it parses, else text)."""
    answers = []
    for call in event["calls"]:
        body = call.get("body")
        status, _, raw = request(
            call["method"], call["path"], body.encode() if body is not None else None
        )
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        answers.append({"status": status, "body": parsed})
    return answers
