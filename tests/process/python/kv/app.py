"""Nubo end-to-end test function: a Python handler (run by awslambdaric) that uses the
key-value HTTP API on its worker's Runtime API endpoint with nothing but urllib.

`scenario` sets, gets, increments, lists, compares-and-swaps, batches and deletes keys under a
prefix in its bound store and returns what it saw. `calls` makes the raw requests the event
lists, for the error cases. At import (init, before the first event) it writes the key named
by KV_INIT_KEY, if set, to show the API works between invocations too.
"""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/nubo/v1/kv"
# The API is on loopback: never send it through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(method, path, body=None, content_type=None):
    """One request to the key-value API: (status, lower-cased headers, body bytes)."""
    headers = {"content-type": content_type} if content_type else {}
    req = urllib.request.Request(API + path, data=body, method=method, headers=headers)
    try:
        with OPENER.open(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def post_json(path, doc):
    return request("POST", path, json.dumps(doc).encode(), "application/json")


def key_path(store, key, suffix=""):
    """`/{store}/{key}` with the key percent-encoded, slashes included."""
    return "/" + store + "/" + urllib.parse.quote(key, safe="") + suffix


if os.environ.get("KV_INIT_KEY"):
    status, _, _ = request(
        "PUT", key_path(os.environ["KV_STORE"], os.environ["KV_INIT_KEY"]), b"written at init"
    )
    if status != 204:
        raise RuntimeError(f"the init-time PUT answered {status}")


def scenario(event, context):
    """Exercises every operation on the bound store under `prefix`; returns what it saw."""
    store = event["store"]
    p = event["prefix"]
    seen = {}

    def put(key, value, query=""):
        return request("PUT", key_path(store, key) + query, value)[0]

    seen["put"] = [put(p + "item 1/a", b"apple"), put(p + "item 2/b", b"banana", "?ttl=1h")]
    status, headers, body = request("GET", key_path(store, p + "item 1/a"))
    seen["get"] = {
        "status": status,
        "body": body.decode(),
        "content_type": headers.get("content-type"),
        "has_version": "nubo-kv-version" in headers,
    }
    status, _, body = request("GET", key_path(store, p + "missing"))
    seen["get_missing"] = {"status": status, "error": json.loads(body)["error"]["code"]}

    count = key_path(store, p + "count", "/increment")
    seen["increments"] = [
        json.loads(post_json(count, {"delta": 5})[2])["value"],
        json.loads(post_json(count, {"delta": -2})[2])["value"],
        json.loads(request("POST", count)[2])["value"],
    ]
    status, _, body = post_json(key_path(store, p + "item 1/a", "/increment"), {"delta": 1})
    seen["increment_text"] = {"status": status, "error": json.loads(body)["error"]["code"]}

    query = urllib.parse.urlencode({"prefix": p, "limit": 2})
    status, _, body = request("GET", "/" + store + "?" + query)
    first = json.loads(body)
    keys = list(first["keys"])
    cursor = first["cursor"]
    pages = 1
    while cursor is not None and pages < 10:
        query = urllib.parse.urlencode({"prefix": p, "limit": 2, "cursor": cursor})
        page = json.loads(request("GET", "/" + store + "?" + query)[2])
        keys += page["keys"]
        cursor = page["cursor"]
        pages += 1
    seen["list"] = {"status": status, "keys": keys, "pages": pages}

    cas = key_path(store, p + "cas", "/cas")
    swaps = [
        json.loads(post_json(cas, {"expected_version": None, "value": "v1"})[2])["swapped"],
        json.loads(post_json(cas, {"expected_version": None, "value": "again"})[2])["swapped"],
    ]
    _, headers, _ = request("GET", key_path(store, p + "cas"))
    version = int(headers["nubo-kv-version"])
    swaps.append(
        json.loads(post_json(cas, {"expected_version": version, "value": "v2"})[2])["swapped"]
    )
    swaps.append(
        json.loads(post_json(cas, {"expected_version": version, "value": "v3"})[2])["swapped"]
    )
    seen["cas"] = swaps
    seen["cas_value"] = request("GET", key_path(store, p + "cas"))[2].decode()

    raw = bytes(range(256))
    batch_set = post_json(
        "/" + store + ":batch-set",
        {
            "items": [
                {"key": p + "b1", "value": "one"},
                {"key": p + "b2", "value_base64": base64.b64encode(raw).decode()},
            ]
        },
    )[0]
    got = json.loads(
        post_json("/" + store + ":batch-get", {"keys": [p + "b1", p + "b2", p + "nope"]})[2]
    )["items"]
    seen["batch"] = {
        "set": batch_set,
        "keys": [i["key"] for i in got],
        "b1": base64.b64decode(got[0]["value_base64"]).decode(),
        "b2_intact": base64.b64decode(got[1]["value_base64"]) == raw,
        "nope": got[2]["value_base64"],
        "delete": post_json("/" + store + ":batch-delete", {"keys": [p + "b1"]})[0],
        "b1_after": request("HEAD", key_path(store, p + "b1"))[0],
    }

    seen["delete"] = request("DELETE", key_path(store, p + "item 2/b"))[0]
    seen["delete_again"] = request("DELETE", key_path(store, p + "item 2/b"))[0]
    seen["head_deleted"] = request("HEAD", key_path(store, p + "item 2/b"))[0]
    seen["head_kept"] = request("HEAD", key_path(store, p + "item 1/a"))[0]
    return seen


def calls(event, context):
    """Makes the requests in `event["calls"]` ({method, path, body?}) and returns each
    answer's status, content-type and body (JSON when it parses, else text)."""
    answers = []
    for call in event["calls"]:
        body = call.get("body")
        status, headers, raw = request(
            call["method"], call["path"], body.encode() if body is not None else None
        )
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        answers.append(
            {"status": status, "content_type": headers.get("content-type"), "body": parsed}
        )
    return answers
