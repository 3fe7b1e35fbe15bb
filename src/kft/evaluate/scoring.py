"""Task metrics on generated answers: exact match, or parsed-JSON equality."""

from __future__ import annotations

import json

METRICS = ("none", "exact", "json")


def _parse_json(text: str):
    """The first JSON value in `text` (a model may add text after it), or None."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
        return value
    except json.JSONDecodeError:
        return None


def correct(metric: str, prediction: str, reference: str) -> bool:
    if metric == "exact":
        return prediction.strip() == reference.strip()
    if metric == "json":
        expected = _parse_json(reference)
        return expected is not None and _parse_json(prediction) == expected
    raise ValueError(f"unknown metric {metric!r}")


def score(metric: str, predictions: list[str], references: list[str]) -> float | None:
    """Percentage of predictions that are correct under `metric` (None for metric 'none')."""
    if metric == "none" or not predictions:
        return None
    hits = sum(correct(metric, p, r) for p, r in zip(predictions, references))
    return round(100.0 * hits / len(predictions), 2)
