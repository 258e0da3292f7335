"""`gpuinfra inventory STACK`: the stack outputs (or the offline plan's) as Ansible inventory variables.

Static form (stdout): a YAML inventory with the `gpu_nodes` group, its hosts (from --hosts) and vars.
Directory form (--output DIR): an `amazon.aws.aws_ec2` inventory source that finds the stack's nodes by
tag, reached over SSM, plus `group_vars/gpu_nodes.yml` with the same vars, written atomically.

Values are data, never code: Ansible renders any string in an inventory as a Jinja template, so every
string value gpuinfra writes is tagged `!unsafe` (Ansible's marker for "never template this"), and the
aws_ec2 source's `compose` (Jinja expressions by design) holds only constants written here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpuinfra.catalog import find_instance_type
from gpuinfra.config import RegionName, Sla, StackName
from gpuinfra.contract import NODE_GROUP, host_constants
from gpuinfra.documents import load_json_object
from gpuinfra.errors import InputError, Problem, problems_from_validation_error
from gpuinfra.request import ServingRequest
from gpuinfra.software_stack import software_document

HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class _Contract(BaseModel):
    """Strict types: outputs are JSON written by the program, so "2" for a count is a sign of a wrong file."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, strict=True)


class WeightsOutput(_Contract):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False, strict=True, extra="forbid")

    source: str
    revision: str | None = None
    local_dir: str


class NodePlanOutput(_Contract):
    """One instance type's plan: expected hardware, requirements, serving plan (contract.node_plans)."""

    hardware: dict[str, Any]
    requirements: dict[str, Any]
    serving: dict[str, Any]


class StackOutputs(_Contract):
    """`pulumi stack output --json` of a gpuinfra stack, type-checked. Outputs the inventory does not use
    are kept as they are (extra keys allowed: a newer program may export more)."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, strict=True, extra="allow")
    stack: StackName
    region: RegionName
    nodes: int = Field(ge=1, le=64)
    nodes_per_copy: int = Field(1, ge=1, le=64)
    capacity: str | None = None
    instance_types: list[str] = Field(min_length=1)
    request: ServingRequest
    weights: WeightsOutput
    node_plans: dict[str, NodePlanOutput]
    sla: Sla | None = None
    auto_scaling_group_name: str | None = None
    endpoint_dns_name: str | None = None

    @field_validator("instance_types")
    @classmethod
    def _types(cls, values: list[str]) -> list[str]:
        problems = []
        for index, name in enumerate(values):
            try:
                find_instance_type(name, path=str(index))
            except InputError as exc:
                problems.extend(exc.problems)
        if problems:
            raise InputError(problems)
        return values

    @model_validator(mode="after")
    def _plans_cover_types(self) -> StackOutputs:
        missing = [name for name in self.instance_types if name not in self.node_plans]
        if missing:
            raise ValueError(f"node_plans has no plan for {', '.join(missing)}")
        if self.nodes % self.nodes_per_copy:
            raise ValueError(f"nodes {self.nodes} is not a whole number of copies of {self.nodes_per_copy}")
        return self


def load_outputs(source: str | dict[str, Any], label: str = "--outputs") -> StackOutputs:
    """A deployed stack's outputs (a JSON file) or the offline plan's (a dict), type-checked."""
    raw = load_json_object(source, label) if isinstance(source, str) else source
    missing = [name for name, field in StackOutputs.model_fields.items() if field.is_required() and name not in raw]
    if missing:
        raise InputError([Problem(label, f"is not a gpuinfra stack's outputs: missing {', '.join(missing)}")])
    try:
        return StackOutputs.model_validate(raw)
    except ValidationError as exc:
        raise InputError(problems_from_validation_error(exc, label)) from None


def group_vars(outputs: StackOutputs) -> dict[str, Any]:
    variables = {
        "gpuinfra_stack": outputs.stack,
        "gpuinfra_region": outputs.region,
        "gpuinfra_nodes": outputs.nodes,
        "gpuinfra_capacity": outputs.capacity,
        "gpuinfra_instance_types": outputs.instance_types,
        "gpuinfra_request": outputs.request.to_dict(),
        "gpuinfra_weights": outputs.weights.model_dump(mode="json"),
        "gpuinfra_node_plans": {name: plan.model_dump(mode="json") for name, plan in outputs.node_plans.items()},
        "gpuinfra_auto_scaling_group": outputs.auto_scaling_group_name,
        "gpuinfra_endpoint_dns_name": outputs.endpoint_dns_name,
        "gpuinfra_sla": outputs.sla.model_dump(mode="json") if outputs.sla else None,
        "gpuinfra_software": software_document(),
        "gpuinfra_constants": host_constants(),
    }
    if len(outputs.instance_types) == 1:
        variables["gpuinfra_instance_type"] = outputs.instance_types[0]
    return variables


# --- hosts ------------------------------------------------------------------------------------------------


def host_problem(name: str) -> str | None:
    """Why NAME is neither an IP address nor a DNS host name, or None."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
            return "is not a host's address (unspecified, broadcast or multicast)"
        return None
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(HOSTNAME_LABEL.fullmatch(label) for label in labels):
        return "is neither an IP address nor a host name (letters, digits and '-' in dot-separated labels)"
    if labels[-1].isdigit():
        return "looks like an IPv4 address but is not a valid one"
    return None


def parse_hosts(items: list[str], outputs: StackOutputs) -> dict[str, dict[str, Any]]:
    """--hosts NAME[=TYPE],... checked: real addresses or names, no duplicates, a whole number of copies."""
    hosts: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    types = outputs.instance_types
    for item in items:
        for entry in (part.strip() for part in item.split(",")):
            if not entry:
                continue
            name, _, instance_type = entry.partition("=")
            shown = name[:80]
            problem = host_problem(name)
            if problem:
                problems.append(Problem("--hosts", f"{shown!r} {problem}"))
                continue
            if name.lower() in (h.lower() for h in hosts):
                problems.append(Problem("--hosts", f"{shown} is given twice"))
                continue
            host_vars: dict[str, Any] = {}
            if instance_type:
                if instance_type not in types:
                    problems.append(Problem("--hosts", f"{shown}: {instance_type[:40]!r} is not one of the stack's "
                                                       f"instance types ({', '.join(types)})"))
                host_vars["gpuinfra_instance_type"] = instance_type
            elif len(types) > 1:
                problems.append(Problem("--hosts", f"{shown}: say which instance type it is (NAME=TYPE); the stack "
                                                   f"launches {', '.join(types)}"))
            hosts[name] = host_vars
    if items and not hosts and not problems:
        problems.append(Problem("--hosts", "names no host"))
    if hosts and not problems:
        problems += _shape_problems(len(hosts), outputs)
    if problems:
        raise InputError(problems)
    return hosts


def _shape_problems(count: int, outputs: StackOutputs) -> list[Problem]:
    if count > outputs.nodes:
        return [Problem("--hosts", f"{count} hosts, but stack {outputs.stack} has {outputs.nodes} node(s)")]
    if count % outputs.nodes_per_copy:
        return [Problem("--hosts", f"{count} hosts is not a whole number of model copies: one copy spans "
                                   f"{outputs.nodes_per_copy} nodes")]
    return []


# --- writing ----------------------------------------------------------------------------------------------


class _Unsafe(str):
    """A string Ansible must never render as a template (dumped with the `!unsafe` tag)."""


class _InventoryDumper(yaml.SafeDumper):
    pass


_InventoryDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


_TEMPLATE_MARKERS = ("{{", "{%", "{#")


def _as_data(value: Any) -> Any:
    """VALUE with every string value that Ansible could render (one holding a Jinja delimiter) marked
    never-to-be-templated. Only those: Ansible 2.19 reads other `!unsafe` strings back as numbers where they
    look like one (`'12.8'` becomes 12.8), which breaks every version comparison in the roles."""
    if isinstance(value, str):
        return _Unsafe(value) if any(marker in value for marker in _TEMPLATE_MARKERS) else value
    if isinstance(value, dict):
        return {key: _as_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_data(item) for item in value]
    return value


def dump_inventory_yaml(document: Any) -> str:
    return yaml.dump(_as_data(document), Dumper=_InventoryDumper, sort_keys=False, width=120)


def static_inventory(outputs: StackOutputs, hosts: list[str]) -> str:
    group = {"hosts": parse_hosts(hosts, outputs) or None, "vars": group_vars(outputs)}
    return dump_inventory_yaml({"all": {"children": {NODE_GROUP: group}}})


def aws_ec2_source(outputs: StackOutputs) -> dict[str, Any]:
    """The inventory plugin's config. `compose` values are Jinja expressions: constants only, never input."""
    return {
        "plugin": "amazon.aws.aws_ec2",
        "regions": [outputs.region],
        "filters": {"tag:gpuinfra:stack": outputs.stack, "instance-state-name": "running"},
        "hostnames": ["instance-id"],
        "groups": {NODE_GROUP: "true"},
        "compose": {
            "gpuinfra_instance_type": "instance_type",
            "ansible_host": "instance_id",
            # SSM reaches a node by instance id; nodes reach each other (and Prometheus reaches them) by address.
            "gpuinfra_private_ip": "private_ip_address",
            "ansible_connection": "'community.aws.aws_ssm'",
        },
    }


def check_output_directory(directory: Path) -> None:
    """Refuse, before any work, an --output that is a file or cannot be created or written."""
    if directory.exists() and not directory.is_dir():
        raise InputError([Problem("--output", f"{directory} exists and is not a directory")])
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError([Problem("--output", f"{directory}: {existing} is not a directory")])
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError([Problem("--output", f"{directory}: {existing} is not writable")])


def write_directory(outputs: StackOutputs, directory: Path) -> list[Path]:
    """Write the aws_ec2 source and group_vars atomically: the new directory is built complete beside DIR
    (keeping any other files DIR holds, such as host_vars) and swapped in by rename, so a failure at any
    step leaves DIR exactly as it was."""
    variables = {**group_vars(outputs), "ansible_aws_ssm_region": outputs.region}
    files = {
        Path("aws_ec2.yml"): yaml.safe_dump(aws_ec2_source(outputs), sort_keys=False),
        Path("group_vars") / f"{NODE_GROUP}.yml": "# Written by `gpuinfra inventory`; regenerate rather than edit.\n"
                                                   + dump_inventory_yaml(variables),
    }
    if directory.is_symlink():  # write where the link points: swapping the directory in must keep the link
        directory = directory.resolve()
    check_output_directory(directory)
    staging = previous = None
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
        if directory.exists():
            shutil.copytree(directory, staging, symlinks=True, dirs_exist_ok=True)
        for relative, text in files.items():
            target = staging / relative
            if target.is_dir():
                raise IsADirectoryError(f"{directory / relative} is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        if directory.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            directory.rename(previous / "d")
        staging.rename(directory)
    except OSError as exc:
        if previous is not None and (previous / "d").exists() and not directory.exists():
            (previous / "d").rename(directory)  # put the old directory back
        raise InputError([Problem("--output", f"{directory}: {exc.strerror or exc}; nothing was changed")]) from None
    finally:
        for leftover in (staging, previous):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return [directory / relative for relative in files]


class _InventoryLoader(yaml.SafeLoader):
    pass


_InventoryLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def read_inventory_yaml(text: str) -> Any:
    """An inventory gpuinfra wrote, as plain data (`!unsafe` strings read as the strings they are)."""
    return yaml.load(text, Loader=_InventoryLoader)  # noqa: S506 - a SafeLoader subclass with one scalar tag
