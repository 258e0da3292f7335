"""gpu-guardrails: model-aware hardware minimums and security guardrails for GPU inference stacks.

Each rule is a pulumi_policy policy whose `validate(args, report_violation)` is a pure function in a
domain module. `POLICIES` lists them; the CrossGuard pack (`__main__.py`) and the offline plan
(`gpu_guardrails.offline`) both run exactly these objects.
"""

from gpu_guardrails.compute import COMPUTE_POLICIES
from gpu_guardrails.kubernetes import KUBERNETES_POLICIES
from gpu_guardrails.network import NETWORK_POLICIES
from gpu_guardrails.security import SECURITY_POLICIES
from gpu_guardrails.sizing import SIZING_POLICIES
from gpu_guardrails.storage import STORAGE_POLICIES

PACK_NAME = "gpu-guardrails"
POLICIES = [*SIZING_POLICIES, *COMPUTE_POLICIES, *NETWORK_POLICIES, *STORAGE_POLICIES, *SECURITY_POLICIES,
            *KUBERNETES_POLICIES]
