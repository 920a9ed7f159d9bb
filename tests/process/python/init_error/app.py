"""Nubo end-to-end test function whose module fails to import (a Lambda init error)."""

raise RuntimeError("init failed on purpose: missing configuration")


def handler(event, context):
    """Never reached: the import above fails first."""
    return event
