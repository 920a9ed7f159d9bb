"""Nubo end-to-end test function: plain Lambda handlers run by awslambdaric.

Each handler exercises one behaviour the tests check: a result, a raised error, an HTTP
response built from the API Gateway 2.0 event, a timeout and a crash of the process (the
last two only when the event asks, so the next call on the same function shows recovery).
"""

import base64
import json
import os
import time


def handler(event, context):
    """Returns the event, with the request id and function name the runtime saw."""
    if isinstance(event, dict) and "print" in event:
        print(event["print"], flush=True)
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
    }


class HandlerFailed(Exception):
    """The error `fail` raises, so the test can check the reported errorType."""


def fail(event, context):
    """Raises: the runtime reports it on /error."""
    raise HandlerFailed("failing on request")


def http(event, context):
    """Answers an API Gateway 2.0 event with a description of that event."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        raw = base64.b64decode(body)
    else:
        raw = body.encode()
    query = event.get("queryStringParameters") or {}
    if query.get("binary") == "1":
        # Binary out: the raw request body, base64 as Lambda expects.
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/octet-stream"},
            "body": base64.b64encode(raw).decode(),
            "isBase64Encoded": True,
        }
    headers = event.get("headers") or {}
    description = {
        "version": event.get("version"),
        "method": event["requestContext"]["http"]["method"],
        "rawPath": event.get("rawPath"),
        "rawQueryString": event.get("rawQueryString"),
        "query": query,
        "cookies": event.get("cookies") or [],
        "headers": {k: headers[k] for k in ("x-test", "content-type", "cookie") if k in headers},
        "header_names_lower": all(k == k.lower() for k in headers),
        "isBase64Encoded": event.get("isBase64Encoded"),
        "body": raw.decode("utf-8", "replace"),
        "body_len": len(raw),
    }
    return {
        "statusCode": 201,
        "headers": {"content-type": "application/json", "x-handler": "python-http"},
        "cookies": ["session=python; Path=/", "theme=dark"],
        "body": json.dumps(description),
        "isBase64Encoded": False,
    }


def slow(event, context):
    """Sleeps for `sleep_s` seconds (none when absent), to run past a timeout on request."""
    seconds = float(event.get("sleep_s", 0)) if isinstance(event, dict) else 0
    time.sleep(seconds)
    return {"slept": seconds}


def crash(event, context):
    """Kills its own process mid-invocation when the event has `"crash": true`."""
    if isinstance(event, dict) and event.get("crash") is True:
        print("python: crashing on request", flush=True)
        os._exit(3)
    return {"crashed": False}
