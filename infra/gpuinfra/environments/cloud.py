"""The cloud side of environments: capacity answers (capacity.CapacityApi) and the resources tagged
`gpuinfra:stack`, which is how the reaper finds orphans (resources whose stack no longer exists).

`AwsCloud` asks AWS (Resource Groups Tagging API for the tags, capacity.AwsCapacityApi for capacity).
`StandinCloud` is a STAND-IN for AWS used with the stand-in engine: a ledger in the backend of what the
stand-in engine "created", and capacity answers from a document (`.gpuinfra/standin-cloud/capacity.yaml`:
`offerings: {TYPE: [zones]}`, `quotas: {CODE: vCPUs}`, `running_vcpus: {CLASS: n}`,
`reservations: {ID: DescribeCapacityReservations item}`); by default every catalog type is offered in
zones a-c of every region and quotas are ample.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import Field

from gpuinfra.catalog import find_instance_type
from gpuinfra.environments.backend import Store
from gpuinfra.environments.capacity import AwsCapacityApi
from gpuinfra.environments.models import STACK_TAG, Model, ReapDecision

AMPLE_QUOTA = 100_000.0


class TaggedResource(Model):
    """A cloud resource carrying the `gpuinfra:stack` tag."""

    arn: str
    region: str
    tags: dict[str, str] = Field(default_factory=dict)


def find_orphans(tagged: list[TaggedResource], environments: dict[str, str | None]) -> list[ReapDecision]:
    """Resources whose stack is gone from the backend, or whose environment id is not the live stack's
    (the name was reused after an environment of the same name was removed without its resources)."""
    decisions = []
    for resource in tagged:
        stack = resource.tags.get(STACK_TAG, "")
        resource_id = resource.tags.get("gpuinfra:environment-id")
        if stack not in environments:
            why = f"tagged {STACK_TAG}={stack}, and there is no such stack in the backend"
        elif resource_id and environments[stack] and resource_id != environments[stack]:
            why = (f"tagged {STACK_TAG}={stack} of environment {resource_id}, but the stack {stack} is "
                   f"environment {environments[stack]}")
        else:
            continue
        decisions.append(ReapDecision(environment=None, action="orphan", reason=f"{resource.arn} ({resource.region}): "
                                      f"{why}; delete it by hand or import it", resources=[resource.arn]))
    return decisions


class AwsCloud:
    def __init__(self, session=None) -> None:
        import boto3

        self.session = session or boto3.session.Session()
        self.capacity = AwsCapacityApi(self.session)

    def tagged_resources(self, regions: list[str]) -> list[TaggedResource]:
        found = []
        for region in regions:
            client = self.session.client("resourcegroupstaggingapi", region_name=region)
            for page in client.get_paginator("get_resources").paginate(TagFilters=[{"Key": STACK_TAG}]):
                for item in page["ResourceTagMappingList"]:
                    tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                    found.append(TaggedResource(arn=item["ResourceARN"], region=region, tags=tags))
        return found

    def retag(self, region: str, stack: str, environment_id: str, tags: dict[str, str]) -> int:
        """New tags on the environment's running instances: the Auto Scaling group only tags at launch, and the
        node_expiry switch reads `gpuinfra:expires-at` from the instance metadata. Returns how many."""
        ec2 = self.session.client("ec2", region_name=region)
        ids = [instance["InstanceId"]
               for page in ec2.get_paginator("describe_instances").paginate(
                   Filters=running_instances_filter(stack, environment_id))
               for reservation in page["Reservations"] for instance in reservation["Instances"]]
        if ids:
            ec2.create_tags(Resources=ids, Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])
        return len(ids)


def running_instances_filter(stack: str, environment_id: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{STACK_TAG}", "Values": [stack]},
            {"Name": "tag:gpuinfra:environment-id", "Values": [environment_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]


class StandinCloud:
    """STAND-IN for AWS (see the module docstring). Nothing here reaches a network."""

    LEDGER = ".gpuinfra/standin-cloud/resources.json"
    CAPACITY = ".gpuinfra/standin-cloud/capacity.yaml"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.capacity = self

    # --- the ledger of what the stand-in engine created
    def _ledger(self) -> list[dict[str, Any]]:
        data = self.store.read(self.LEDGER)
        return json.loads(data) if data else []

    def record(self, stack: str, region: str, resources: list[dict[str, Any]]) -> None:
        kept = [entry for entry in self._ledger() if entry["tags"].get(STACK_TAG) != stack]
        for resource in resources:
            tags = (resource.get("inputs") or {}).get("tags")
            if resource["type"].startswith("aws:") and isinstance(tags, dict):
                service = resource["type"].split(":")[1].split("/")[0]
                kept.append({"arn": f"arn:aws:{service}:{region}:000000000000:standin/{resource['id']}",
                             "region": region, "tags": tags})
        self.store.write(self.LEDGER, json.dumps(kept, indent=2).encode())

    def forget(self, stack: str) -> None:
        self.store.write(self.LEDGER, json.dumps([e for e in self._ledger() if e["tags"].get(STACK_TAG) != stack],
                                                 indent=2).encode())

    def tagged_resources(self, regions: list[str]) -> list[TaggedResource]:
        return [TaggedResource(**entry) for entry in self._ledger() if entry["region"] in regions]

    def retag(self, region: str, stack: str, environment_id: str, tags: dict[str, str]) -> int:
        """The stand-in engine launches no instances (an Auto Scaling group would): nothing to retag."""
        return 0

    # --- capacity answers
    def _capacity(self) -> dict[str, Any]:
        data = self.store.read(self.CAPACITY)
        return yaml.safe_load(data) or {} if data else {}

    def offered_zones(self, region: str, instance_type: str) -> list[str]:
        offerings = self._capacity().get("offerings") or {}
        if instance_type in offerings:
            return [z for z in offerings[instance_type] if z.startswith(region)]
        try:
            find_instance_type(instance_type)
        except Exception:
            return []
        return [f"{region}{letter}" for letter in "abc"]

    def vcpu_quota(self, region: str, quota_code: str) -> float:
        return float((self._capacity().get("quotas") or {}).get(quota_code, AMPLE_QUOTA))

    def running_vcpus(self, region: str, quota_class: str, spot: bool) -> int:
        return int((self._capacity().get("running_vcpus") or {}).get(quota_class, 0))

    def capacity_reservation(self, region: str, reservation_id: str) -> dict[str, Any] | None:
        found = (self._capacity().get("reservations") or {}).get(reservation_id)
        return {"CapacityReservationId": reservation_id, **found} if found else None
