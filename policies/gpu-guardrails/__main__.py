"""The CrossGuard entry point: `pulumi up --policy-pack policies/gpu-guardrails`. Assembly only; the rules
live in the gpu_guardrails package (also run by `gpuinfra plan`)."""

from gpu_guardrails import PACK_NAME, POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name=PACK_NAME, policies=POLICIES)
