"""Placeholder replaced by the gpu-guardrails rules (issue 4)."""


def evaluate_policies(resources, *, stack):
    return []
