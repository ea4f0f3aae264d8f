"""Reply bodies: HostPriorityList with the capitalised Go field names and scores kept in 0..10."""

from __future__ import annotations

import json

import numpy as np

from extender.http.app import _json
from extender.http.wire import priority_reply


def test_priority_reply_clamps_and_keeps_field_names() -> None:
    scores = [("a", 7), ("b", 11), ("c", -2), ("d", np.int64(3)), ("e", True), ("f", 4.6)]
    assert priority_reply(scores) == [{"Host": "a", "Score": 7}, {"Host": "b", "Score": 10},
                                      {"Host": "c", "Score": 0}, {"Host": "d", "Score": 3},
                                      {"Host": "e", "Score": 1}, {"Host": "f", "Score": 4}]
    assert all(type(h["Score"]) is int for h in priority_reply(scores))


def test_reply_bytes_are_json_with_exact_keys_and_escaped_names() -> None:
    odd = 'node"with\\quote\u00e9'
    body = _json(priority_reply([(odd, 5), ("n-2", 0)])).get_data()
    assert json.loads(body) == [{"Host": odd, "Score": 5}, {"Host": "n-2", "Score": 0}]
    assert body.startswith(b'[{"Host":')
