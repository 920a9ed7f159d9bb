"""Nubo end-to-end test function for trigger deliveries to process functions: a Python
handler (run by awslambdaric) that prints each event it gets as one line
`LAMBDA-EVENT <json>` and, for SQS batches, reports the records whose body contains "bad" as
failed items the way Lambda's partial batch responses do.
"""

import json


def handler(event, context):
    print("LAMBDA-EVENT " + json.dumps(event, sort_keys=True), flush=True)
    records = event.get("Records") if isinstance(event, dict) else None
    if records and records[0].get("eventSource") == "aws:sqs":
        failed = [
            {"itemIdentifier": r["messageId"]} for r in records if "bad" in r.get("body", "")
        ]
        return {"batchItemFailures": failed}
    return {"ok": True}
