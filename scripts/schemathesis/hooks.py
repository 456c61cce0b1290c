"""Schemathesis hooks for `make api-check`: the one rule of a test spec that JSON Schema
cannot state.

A mix's request names must be unique (`requests[i].name`); JSON Schema's `uniqueItems`
compares whole items, not one property of them. Cases with a repeated name are left out of
generation. Filtering only removes cases, positive or negative, so it can never make the API
look more permissive than it is.
"""

import schemathesis


def _repeats_a_name(body):
    if not isinstance(body, dict):
        return False
    mix = body.get("requests")
    if not isinstance(mix, list):
        return False
    names = [r.get("name") for r in mix if isinstance(r, dict) and isinstance(r.get("name"), str)]
    return len(names) != len(set(names))


@schemathesis.hook
def filter_body(ctx, body):
    return not _repeats_a_name(body)
