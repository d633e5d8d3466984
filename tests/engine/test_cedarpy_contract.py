"""The engine calls cedarpy's extension entry point directly; guard that contract."""

from __future__ import annotations

import json
from importlib.metadata import version

import cedarpy
from cedarpy import _internal


def test_cedarpy_is_the_pinned_version() -> None:
    assert version("cedarpy") == "4.12.2", "re-check pdp/engine/evaluate.py before upgrading"


def test_internal_batch_entry_point_shape() -> None:
    policies = cedarpy.PolicySet.from_json_str(
        json.dumps(
            {
                "staticPolicies": {
                    "my.id": json.loads(
                        cedarpy.policies_to_json_str("permit (principal, action, resource);")
                    )["staticPolicies"]["policy0"]
                },
                "templates": {},
                "templateLinks": [],
            }
        )
    )
    entities = cedarpy.Entities.from_json_str("[]")
    request = {
        "principal": {"type": "A", "id": "a"},
        "action": {"type": "Action", "id": "x"},
        "resource": {"type": "R", "id": "r"},
        "context": "{}",
    }
    (raw,) = _internal.is_authorized_batch([request], policies, entities._inner, None, False)
    result = json.loads(raw)
    assert result["decision"] == "Allow"
    assert result["diagnostics"]["reason"] == ["my.id"]
    assert result["diagnostics"]["errors"] == []
