"""Kubernetes objects: GPU limits against the sizing plan, shm for multi-GPU pods, EFA on every pod of a
multi-node group, no privileged pods (the one exception, IPC_LOCK for RDMA, only where the pod says so
with its gpuinfra.io/rdma annotation), an autoscaler metric suited to the model, and Karpenter GPU
NodePools bounded (an nvidia.com/gpu limit, within the budget in their gpuinfra.io/hourly-budget-usd
annotation) and tainted.

The serving request comes from the pod template's gpuinfra.io/* annotations (the Kubernetes twin of the
launch templates' gpuinfra:* tags) and the node types from its node affinity on
node.kubernetes.io/instance-type, so objects written by other teams are checked the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuinfra.kubernetes.target import is_reasoning_model
from gpuinfra.sizing import Hardware, evaluate
from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from gpu_guardrails.common import catalog_type, request_from_tags

STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
REPLICA_SET = "kubernetes:apps/v1:ReplicaSet"
JOB = "kubernetes:batch/v1:Job"
POD = "kubernetes:core/v1:Pod"
LEADER_WORKER_SET = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
BUDGET_ANNOTATION = "gpuinfra.io/hourly-budget-usd"
# Requirement keys that choose GPU nodes without naming a type.
GPU_REQUIREMENT_KEYS = ("karpenter.k8s.aws/instance-gpu-count", "karpenter.k8s.aws/instance-gpu-name",
                        "karpenter.k8s.aws/instance-gpu-manufacturer", "karpenter.k8s.aws/instance-gpu-memory")
TEMPLATED = (STATEFUL_SET, DEPLOYMENT, DAEMON_SET, REPLICA_SET, JOB)
GPU, EFA = "nvidia.com/gpu", "vpc.amazonaws.com/efa"
ANNOTATION = "gpuinfra.io/"
RDMA_ANNOTATION = "gpuinfra.io/rdma"
RDMA_CAPABILITIES = {"IPC_LOCK"}
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


def pod_templates(resource_type: str, props: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(where, pod template) for every pod an object runs: one template, or an LWS's leader and worker."""
    spec = props.get("spec") or {}
    if resource_type in TEMPLATED:
        return [("template", spec.get("template") or {})]
    if resource_type == LEADER_WORKER_SET:
        group = spec.get("leaderWorkerTemplate") or {}
        worker = group.get("workerTemplate") or {}
        return [("leaderTemplate", group.get("leaderTemplate") or worker), ("workerTemplate", worker)]
    if resource_type == POD:
        return [("pod", {"metadata": props.get("metadata") or {}, "spec": spec})]
    return []


def containers(template: Mapping[str, Any], *, init: bool = True) -> list[Mapping[str, Any]]:
    spec = template.get("spec") or {}
    return list(spec.get("containers") or []) + (list(spec.get("initContainers") or []) if init else [])


def amount(container: Mapping[str, Any], resource: str) -> int:
    """A container's limit of an extended resource (requests must equal it for these), 0 when absent."""
    resources = container.get("resources") or {}
    value = (resources.get("limits") or {}).get(resource, (resources.get("requests") or {}).get(resource, 0))
    try:
        return int(str(value))
    except ValueError:
        return 0


def pod_amount(template: Mapping[str, Any], resource: str) -> int:
    return sum(amount(c, resource) for c in containers(template, init=False))


def annotations(template: Mapping[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("annotations") or {})


def request_tags(template: Mapping[str, Any]) -> dict[str, str]:
    """The gpuinfra.io/* annotations as the gpuinfra:* tags the sizing rules read."""
    return {f"gpuinfra:{key.removeprefix(ANNOTATION)}": value for key, value in annotations(template).items()
            if key.startswith(ANNOTATION)}


def node_types(template: Mapping[str, Any]) -> list[str]:
    affinity = (((template.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    names: list[str] = []
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == INSTANCE_TYPE_LABEL and expression.get("operator") == "In":
                names += expression.get("values") or []
    selector = ((template.get("spec") or {}).get("nodeSelector") or {}).get(INSTANCE_TYPE_LABEL)
    return list(dict.fromkeys(names + ([selector] if selector else [])))


def validate_gpu_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for where, template in pod_templates(args.resource_type, args.props):
        gpus = pod_amount(template, GPU)
        tags = request_tags(template)
        request, unreadable = request_from_tags(tags)
        if unreadable:
            report_violation(f"{where}: the serving request in the gpuinfra.io/* annotations cannot be read: "
                             f"{unreadable}", args.urn)
            continue
        if request is None or not gpus:
            continue
        span = max(1, int(tags.get("gpuinfra:nodes-per-copy", "1")))
        for name in node_types(template) or ["(no instance-type affinity)"]:
            instance = catalog_type(name)
            if instance is None:
                report_violation(f"{where}: {name} is not a catalog instance type, so {gpus} GPU(s) per pod "
                                 f"cannot be checked against {request.model.name}'s plan", args.urn)
                continue
            plan = evaluate(request, Hardware.from_instance(instance, span))
            if not plan.feasible:
                report_violation(f"{where}: {name} x {span} cannot serve {request.model.name}: "
                                 f"{'; '.join(plan.reasons)}", args.urn)
                continue
            world = plan.tensor_parallel * plan.pipeline_parallel * max(1, plan.data_parallel) // plan.nodes
            if gpus != world:
                report_violation(f"{where}: the pod asks for {GPU} {gpus}, but the plan on {name} runs "
                                 f"TP {plan.tensor_parallel} x PP {plan.pipeline_parallel} over {plan.nodes} node(s):"
                                 f" {world} GPU(s) per pod", args.urn)


def shm_size(template: Mapping[str, Any], container: Mapping[str, Any]) -> str | None:
    """The sizeLimit of the memory-backed emptyDir the container mounts at /dev/shm, '' without a limit."""
    volumes = {v.get("name"): v for v in (template.get("spec") or {}).get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount.get("mountPath") == "/dev/shm":
            empty_dir = (volumes.get(mount.get("name")) or {}).get("emptyDir")
            if isinstance(empty_dir, Mapping) and empty_dir.get("medium") == "Memory":
                return str(empty_dir.get("sizeLimit") or "")
    return None


def validate_shm(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for where, template in pod_templates(args.resource_type, args.props):
        for container in containers(template, init=False):
            gpus = amount(container, GPU)
            if gpus <= 1:
                continue
            size = shm_size(template, container)
            if size is None:
                report_violation(f"{where}: container {container.get('name')} has {gpus} GPUs but no memory-backed "
                                 "/dev/shm: NCCL and the engine's shared-memory broadcast get the runtime's 64 MiB",
                                 args.urn)
            elif not size:
                report_violation(f"{where}: container {container.get('name')}'s /dev/shm has no sizeLimit; size it "
                                 "and count it in the memory limit", args.urn)


def validate_efa_on_every_pod(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LEADER_WORKER_SET:
        return
    group = (args.props.get("spec") or {}).get("leaderWorkerTemplate") or {}
    if int(group.get("size") or 1) <= 1:
        return
    counts = {where: pod_amount(template, EFA) for where, template in pod_templates(args.resource_type, args.props)}
    missing = [where for where, count in counts.items() if count <= 0]
    if missing:
        report_violation(f"a group of {group.get('size')} pods spans nodes, but {' and '.join(missing)} request no "
                         f"{EFA}: every rank of the group (the leader too) talks NCCL over EFA", args.urn)
    elif len(set(counts.values())) > 1:
        report_violation(f"the leader and the workers request different {EFA} counts ({counts}); one node type "
                         "has one EFA layout", args.urn)


def security_problems(template: Mapping[str, Any]) -> list[str]:
    """What makes a pod privileged, beyond IPC_LOCK where the pod declares RDMA."""
    spec = template.get("spec") or {}
    rdma = annotations(template).get(RDMA_ANNOTATION) == "true"
    problems = [f"{key} is on" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True]
    for container in containers(template):
        context = container.get("securityContext") or {}
        name = container.get("name")
        if context.get("privileged") is True:
            problems.append(f"container {name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name} does not set allowPrivilegeEscalation: false")
        extra = set((context.get("capabilities") or {}).get("add") or []) - (RDMA_CAPABILITIES if rdma else set())
        if extra:
            hint = f' (IPC_LOCK only in an RDMA pod, annotated {RDMA_ANNOTATION}: "true")' if "IPC_LOCK" in extra \
                else ""
            problems.append(f"container {name} adds {', '.join(sorted(extra))}{hint}")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append(f"container {name} does not drop ALL capabilities")
    return problems


def validate_no_privileged_pods(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    for where, template in pod_templates(args.resource_type, args.props):
        for problem in security_problems(template):
            report_violation(f"{where}: {problem}", args.urn)


def _scale_targets(resources: Iterable[Any]) -> dict[tuple[str, str, str], Any]:
    targets = {}
    for resource in resources:
        if pod_templates(resource.resource_type, resource.props):
            metadata = resource.props.get("metadata") or {}
            targets[(resource.props.get("kind"), metadata.get("namespace"), metadata.get("name"))] = resource
    return targets


def validate_autoscaler(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """One autoscaler per workload, and no end-to-end latency target for a reasoning model."""
    targets = _scale_targets(args.resources)
    claimed: dict[tuple, str] = {}
    for scaler in args.resources:
        if scaler.resource_type not in (HPA, SCALED_OBJECT):
            continue
        ref = (scaler.props.get("spec") or {}).get("scaleTargetRef") or {}
        key = (ref.get("kind") or "Deployment", (scaler.props.get("metadata") or {}).get("namespace"), ref.get("name"))
        if key in claimed:
            report_violation(f"{key[0]} {key[2]} is scaled by both {claimed[key]} and {scaler.name}: the two fight "
                             "over its replicas; keep one", scaler.urn)
        claimed[key] = scaler.name
        workload = targets.get(key)
        if workload is None:
            continue
        for _, template in pod_templates(workload.resource_type, workload.props):
            model = annotations(template).get(f"{ANNOTATION}model", "")
            metric = annotations(template).get(f"{ANNOTATION}autoscaling-metric", "")
            if is_reasoning_model(model) and ("e2e" in metric or "e2e" in str(scaler.props.get("spec"))):
                report_violation(f"{scaler.name} scales {model} (a reasoning model) on end-to-end latency: its "
                                 "answers take tens of seconds, so the target pins it at the maximum; use time "
                                 "to first token", scaler.urn)
                break


def node_pool_requirements(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    template = ((props.get("spec") or {}).get("template") or {}).get("spec") or {}
    return list(template.get("requirements") or [])


def node_pool_types(props: Mapping[str, Any]) -> list[str]:
    """The instance types a NodePool's requirements name (operator In on node.kubernetes.io/instance-type)."""
    return [value for r in node_pool_requirements(props) if r.get("key") == INSTANCE_TYPE_LABEL
            and r.get("operator") == "In" for value in r.get("values") or []]


def launches_gpus(props: Mapping[str, Any]) -> bool:
    """The pool may launch GPU nodes: it names a catalog GPU type, selects on a GPU property, or is tainted for
    GPU pods."""
    template = ((props.get("spec") or {}).get("template") or {}).get("spec") or {}
    named = [catalog_type(name) for name in node_pool_types(props)]
    return (any(i is not None and i.gpus > 0 for i in named)
            or any(r.get("key") in GPU_REQUIREMENT_KEYS for r in node_pool_requirements(props))
            or any(t.get("key") == GPU for t in template.get("taints") or []))


def budget_problems(props: Mapping[str, Any], limit: int) -> list[str]:
    """A GPU limit above the whole instances of a named type the pool's budget annotation pays for."""
    text = ((props.get("metadata") or {}).get("annotations") or {}).get(BUDGET_ANNOTATION)
    if text is None:
        return []
    try:
        budget = float(text)
    except ValueError:
        return [f"{BUDGET_ANNOTATION} {text!r} is not a number of dollars per hour"]
    problems = []
    for name in node_pool_types(props):
        instance = catalog_type(name)
        if instance is None or instance.price.usd_per_hour is None:
            problems.append(f"{name} has no catalog price to hold the {GPU} limit against ${budget:.2f}/h")
            continue
        most = int(budget // instance.price.usd_per_hour) * instance.gpus
        if limit > most:
            problems.append(f"the {GPU} limit {limit} is more than ${budget:.2f}/h pays for on {name}: "
                            f"{most // instance.gpus} x {instance.gpus} = {most} GPUs")
    return problems


def validate_node_pool(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """A Karpenter NodePool that may launch GPU nodes has an nvidia.com/gpu limit (within its budget) and
    taints them nvidia.com/gpu:NoSchedule, so only GPU pods land on them."""
    if args.resource_type != NODE_POOL or not launches_gpus(args.props):
        return
    spec = args.props.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    raw = (spec.get("limits") or {}).get(GPU)
    try:
        limit = int(str(raw)) if raw is not None else None
    except ValueError:
        limit = None
    if limit is None:
        report_violation(f"the pool launches GPU nodes without a whole-number {GPU} limit ({raw!r}): Karpenter "
                         "would add GPUs for every pending pod, without bound", args.urn)
    else:
        for problem in budget_problems(args.props, limit):
            report_violation(problem, args.urn)
    if not any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in template.get("taints") or []):
        report_violation(f"the pool's GPU nodes carry no {GPU}:NoSchedule taint: any pod could land on them",
                         args.urn)


k8s_gpu_limits = ResourceValidationPolicy(
    name="k8s-gpu-limits",
    description="A serving pod's nvidia.com/gpu equals its plan's world size per pod (TP x PP x DP / nodes) on "
                "every instance type its node affinity allows, for the request in its gpuinfra.io/* annotations.",
    validate=validate_gpu_limits,
    enforcement_level=EnforcementLevel.MANDATORY,
)
k8s_shm = ResourceValidationPolicy(
    name="k8s-shm-for-multi-gpu",
    description="A container with more than one GPU mounts a memory-backed, size-limited emptyDir at /dev/shm.",
    validate=validate_shm,
    enforcement_level=EnforcementLevel.MANDATORY,
)
k8s_efa = ResourceValidationPolicy(
    name="k8s-efa-on-every-pod",
    description="A LeaderWorkerSet group of more than one pod requests vpc.amazonaws.com/efa on the leader and "
                "the workers alike.",
    validate=validate_efa_on_every_pod,
    enforcement_level=EnforcementLevel.MANDATORY,
)
k8s_privileged = ResourceValidationPolicy(
    name="k8s-no-privileged-pods",
    description="No privileged container, host namespace or privilege escalation; every capability dropped; "
                "IPC_LOCK added only in pods annotated gpuinfra.io/rdma: \"true\".",
    validate=validate_no_privileged_pods,
    enforcement_level=EnforcementLevel.MANDATORY,
)
k8s_autoscaler = StackValidationPolicy(
    name="k8s-autoscaler-metric",
    description="One autoscaler (HPA or KEDA) per workload, and a reasoning model is not scaled on end-to-end "
                "latency.",
    validate=validate_autoscaler,
    enforcement_level=EnforcementLevel.MANDATORY,
)

k8s_node_pool = ResourceValidationPolicy(
    name="k8s-karpenter-gpu-limit",
    description="A Karpenter NodePool that may launch GPU nodes has a whole-number nvidia.com/gpu limit, no more "
                "than the budget in its gpuinfra.io/hourly-budget-usd annotation pays for on each type it names, "
                "and taints its nodes nvidia.com/gpu:NoSchedule.",
    validate=validate_node_pool,
    enforcement_level=EnforcementLevel.MANDATORY,
)

KUBERNETES_POLICIES = [k8s_gpu_limits, k8s_shm, k8s_efa, k8s_privileged, k8s_autoscaler, k8s_node_pool]
