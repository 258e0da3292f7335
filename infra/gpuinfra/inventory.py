"""`gpuinfra inventory STACK`: the stack outputs (or the offline plan's) as Ansible inventory variables.

Static form (stdout): a YAML inventory with the `gpu_nodes` group, its hosts (from --hosts) and vars.
Directory form (--output DIR): an `amazon.aws.aws_ec2` inventory source that finds the stack's nodes by
tag, reached over SSM, plus `group_vars/gpu_nodes.yml` with the same vars.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gpuinfra.catalog import load_catalog
from gpuinfra.contract import NODE_GROUP
from gpuinfra.errors import InputError, Problem

REQUIRED_OUTPUTS = ("stack", "region", "nodes", "instance_types", "request", "weights", "node_plans")


def group_vars(outputs: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in REQUIRED_OUTPUTS if key not in outputs]
    if missing:
        raise InputError([Problem("--outputs", f"is not a gpuinfra stack's outputs: missing {', '.join(missing)}")])
    variables = {
        "gpuinfra_stack": outputs["stack"],
        "gpuinfra_region": outputs["region"],
        "gpuinfra_nodes": outputs["nodes"],
        "gpuinfra_capacity": outputs.get("capacity"),
        "gpuinfra_instance_types": outputs["instance_types"],
        "gpuinfra_request": outputs["request"],
        "gpuinfra_weights": outputs["weights"],
        "gpuinfra_node_plans": outputs["node_plans"],
        "gpuinfra_auto_scaling_group": outputs.get("auto_scaling_group_name"),
        "gpuinfra_endpoint_dns_name": outputs.get("endpoint_dns_name"),
        "gpuinfra_sla": outputs.get("sla"),
        "gpuinfra_software": load_catalog().software.model_dump(mode="json", exclude={"sources"}),
    }
    if len(outputs["instance_types"]) == 1:
        variables["gpuinfra_instance_type"] = outputs["instance_types"][0]
    return variables


def parse_hosts(items: list[str], instance_types: list[str]) -> dict[str, dict[str, Any]]:
    hosts: dict[str, dict[str, Any]] = {}
    problems = []
    for item in items:
        for entry in filter(None, (part.strip() for part in item.split(","))):
            name, _, instance_type = entry.partition("=")
            host_vars: dict[str, Any] = {}
            if instance_type:
                if instance_type not in instance_types:
                    problems.append(Problem("--hosts", f"{name}: {instance_type} is not one of the stack's "
                                                       f"instance types ({', '.join(instance_types)})"))
                host_vars["gpuinfra_instance_type"] = instance_type
            elif len(instance_types) > 1:
                problems.append(Problem("--hosts", f"{name}: say which instance type it is (NAME=TYPE); the stack "
                                                   f"launches {', '.join(instance_types)}"))
            hosts[name] = host_vars
    if problems:
        raise InputError(problems)
    return hosts


def static_inventory(outputs: dict[str, Any], hosts: list[str]) -> str:
    variables = group_vars(outputs)
    group = {"hosts": parse_hosts(hosts, outputs["instance_types"]) or None, "vars": variables}
    return yaml.safe_dump({"all": {"children": {NODE_GROUP: group}}}, sort_keys=False, width=120)


def aws_ec2_source(outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "plugin": "amazon.aws.aws_ec2",
        "regions": [outputs["region"]],
        "filters": {"tag:gpuinfra:stack": outputs["stack"], "instance-state-name": "running"},
        "hostnames": ["instance-id"],
        "groups": {NODE_GROUP: "true"},
        "compose": {
            "gpuinfra_instance_type": "instance_type",
            "ansible_host": "instance_id",
            # SSM reaches a node by instance id; nodes reach each other (and Prometheus reaches them) by address.
            "gpuinfra_private_ip": "private_ip_address",
            "ansible_connection": "'community.aws.aws_ssm'",
            "ansible_aws_ssm_region": f"'{outputs['region']}'",
        },
    }


def write_directory(outputs: dict[str, Any], directory: Path) -> list[Path]:
    variables = group_vars(outputs)
    (directory / "group_vars").mkdir(parents=True, exist_ok=True)
    written = [directory / "aws_ec2.yml", directory / "group_vars" / f"{NODE_GROUP}.yml"]
    written[0].write_text(yaml.safe_dump(aws_ec2_source(outputs), sort_keys=False), encoding="utf-8")
    written[1].write_text("# Written by `gpuinfra inventory`; regenerate rather than edit.\n"
                          + yaml.safe_dump(variables, sort_keys=False, width=120), encoding="utf-8")
    return written


def load_json_object(path: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError([Problem(flag, f"cannot read {path}: {exc}")]) from None
    if not isinstance(data, dict):
        raise InputError([Problem(flag, f"{path} must hold a JSON object")])
    return data


def load_outputs(path: str) -> dict[str, Any]:
    """`pulumi stack output --json` of a deployed stack."""
    return load_json_object(path, "--outputs")
