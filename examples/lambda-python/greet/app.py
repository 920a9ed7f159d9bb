"""A plain Lambda handler: API Gateway 2.0 events in, a response object out."""

import json
import os


def handler(event, context):
    if "rawPath" not in event:
        # Invoked directly (`nubo invoke lambda-python/greet -d '{"name": "Ada"}'`).
        name = event.get("name", "world") if isinstance(event, dict) else "world"
        return {"greeting": f"{os.environ['GREETING']}, {name}!"}
    name = event["rawPath"].rsplit("/", 1)[-1] or "world"
    body = {
        "greeting": f"{os.environ['GREETING']}, {name}!",
        "function": context.function_name,
        "request_id": context.aws_request_id,
        "query": event.get("queryStringParameters") or {},
    }
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body) + "\n",
    }
