"""`gpuinfra plan` and `gpuinfra inventory`: JSON keys, exit codes, overrides, inventories Ansible can read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpuinfra.catalog import load_catalog
from gpuinfra.cli import main
from gpuinfra.inventory import read_inventory_yaml

PLAN_KEYS = {"stack", "resources", "violations", "cost_per_hour_usd", "sizing"}


def run(*argv: str, capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue(), capsys.readouterr().err


@pytest.mark.parametrize("stack", ["dev-7b", "prod-70b", "prod-r1", "spot-32b"])
def test_plan_json_contract(stack, capsys):
    code, out, err = run("plan", stack, "--json", capsys=capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert set(plan) >= PLAN_KEYS
    assert plan["stack"] == stack and plan["violations"] == []
    for resource in plan["resources"]:
        assert set(resource) == {"type", "name", "parent", "inputs"}
    templates = [r for r in plan["resources"] if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert templates and all("instanceType" in t["inputs"] and "networkInterfaces" in t["inputs"] for t in templates)
    assert plan["sizing"][0]["feasible"] is True and plan["cost_per_hour_usd"] > 0


def test_plan_human_output_has_tree_sizing_and_cost(capsys):
    from gpuinfra.catalog import find_instance_type

    code, out, _ = run("plan", "prod-r1", capsys=capsys)
    assert code == 0
    cost = 2 * find_instance_type("p5.48xlarge").price.usd_per_hour  # 2 nodes, from the catalog
    for text in ("resources (pulumi up would create)", "gpuinfra:aws:GpuNodePool", "interfaces=32 (8 efa, 24 efa-only)",
                 "placement-group", "TP 8 PP 2", "weights", f"cost: up to ${cost:,.2f}/h"):
        assert text in out, text


def test_set_overrides_a_field(capsys):
    code, out, _ = run("plan", "dev-7b", "--json", "--set", "nodes=64", "--set", "hourly_budget_usd=100",
                       capsys=capsys)
    assert code == 0
    plan = json.loads(out)
    (group,) = [r for r in plan["resources"] if r["type"] == "aws:autoscaling/group:Group"]
    assert group["inputs"]["desiredCapacity"] == 64
    assert plan["cost_per_hour_usd"] == pytest.approx(64 * plan["sizing"][0]["cost_per_hour_usd"], abs=0.01)


def test_plan_bad_input_exits_2_and_infeasible_exits_1(capsys):
    code, out, err = run("plan", "prod-70b", "--set", "instance_types=g6e.xlarge", "--set", "nodes=0",
                         "--set", "bogus", capsys=capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "--set: 'bogus' is not FIELD=VALUE" in err
    code, _, err = run("plan", "prod-70b", "--set", "instance_types=g6e.xlarge", "--set", "nodes=0", capsys=capsys)
    assert code == 2 and "cluster.nodes" in err
    # Well-formed but infeasible: exit 1, as `gpuinfra size` does (one rule for every command).
    code, out, err = run("plan", "prod-70b", "--set", "instance_types=g6e.xlarge", capsys=capsys)
    assert code == 1 and out == "" and "error: cluster.instance_types.0: g6e.xlarge x 1 node(s): weights need" in err


def test_unknown_stack_names_the_shipped_ones(capsys):
    code, _, err = run("plan", "prod-7b", capsys=capsys)
    assert code == 2 and "dev-7b, eks-70b, eks-r1, prod-70b, prod-r1, spot-32b" in err


def test_inventory_static_form(capsys):
    code, out, err = run("inventory", "prod-r1", "--hosts", "10.0.0.5,10.0.0.6", capsys=capsys)
    assert code == 0, err
    inventory = read_inventory_yaml(out)
    group = inventory["all"]["children"]["gpu_nodes"]
    assert set(group["hosts"]) == {"10.0.0.5", "10.0.0.6"}
    variables = group["vars"]
    assert variables["gpuinfra_instance_type"] == "p5.48xlarge"
    plan = variables["gpuinfra_node_plans"]["p5.48xlarge"]
    assert plan["serving"]["tensor_parallel"] == 8 and plan["serving"]["pipeline_parallel"] == 2
    assert plan["hardware"]["gpu_count"] == 8 and plan["hardware"]["efa_devices"] == 32
    assert variables["gpuinfra_request"]["model"] == "deepseek-r1"
    assert variables["gpuinfra_software"]["nvidia_driver"]["branch"] == "580"
    assert variables["gpuinfra_sla"] == {"ttft_p99_s": 2.0, "e2e_p99_s": 60.0, "error_rate": 0.01,
                                         "min_output_tokens_per_s": None, "min_stream_tokens_per_s": 10.0}


def test_catalog_software_is_the_document_the_roles_read(capsys):
    code, out, _ = run("catalog", "software", "--json", capsys=capsys)
    software = json.loads(out)
    assert code == 0 and "sources" not in software
    assert software["efa_installer"]["sha256"] and software["nvidia_driver"]["version"].startswith("580.")
    # Read without the models, it is the file as written, which the catalog's model validated: every value the
    # file sets, as the model reads it (defaults the file leaves unset are the sizing engine's, not the hosts').
    assert software == load_catalog().software.model_dump(mode="json", exclude={"sources"}, exclude_unset=True)


def test_catalog_software_runs_without_loading_the_models():
    """Every Ansible run that does not carry the stack asks for it, with every host waiting: the command stays
    clear of pydantic and the sizing engine (a structural check, not a timing)."""
    program = ("import io, sys\nfrom gpuinfra.cli import main\nassert main(['catalog', 'software', '--json'], "
               "out=io.StringIO()) == 0\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' "
               "or m in ('gpuinfra.sizing', 'gpuinfra.catalog')))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_inventory_needs_the_type_of_each_host_when_the_stack_launches_several(capsys):
    code, _, err = run("inventory", "spot-32b", "--hosts", "a", capsys=capsys)
    assert code == 2 and "say which instance type it is" in err
    code, out, _ = run("inventory", "spot-32b", "--hosts", "a=g5.48xlarge", capsys=capsys)
    assert code == 0
    host = read_inventory_yaml(out)["all"]["children"]["gpu_nodes"]["hosts"]["a"]
    assert host == {"gpuinfra_instance_type": "g5.48xlarge"}


def test_inventory_from_deployed_outputs_and_directory_form(tmp_path, capsys):
    code, out, _ = run("plan", "prod-70b", "--json", capsys=capsys)
    outputs = json.loads(out)["outputs"]
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps(outputs))
    code, out, err = run("inventory", "prod-70b", "--outputs", str(outputs_file), "--output", str(tmp_path / "inv"),
                         capsys=capsys)
    assert code == 0, err
    source = yaml.safe_load((tmp_path / "inv" / "aws_ec2.yml").read_text())
    assert source["plugin"] == "amazon.aws.aws_ec2"
    assert source["filters"]["tag:gpuinfra:stack"] == "prod-70b"
    assert source["compose"]["gpuinfra_private_ip"] == "private_ip_address"
    group_vars = read_inventory_yaml((tmp_path / "inv" / "group_vars" / "gpu_nodes.yml").read_text())
    assert set(group_vars["gpuinfra_node_plans"]) == {"p4de.24xlarge", "p5.48xlarge"}
    code, _, err = run("inventory", "prod-r1", "--outputs", str(outputs_file), capsys=capsys)
    assert code == 2 and "belong to stack prod-70b" in err
    outputs_file.write_text("{}")
    code, _, err = run("inventory", "prod-70b", "--outputs", str(outputs_file), capsys=capsys)
    assert code == 2 and "missing stack" in err


def test_make_plan_path_runs_as_a_real_process():
    exe = Path(sys.executable).with_name("gpuinfra")
    result = subprocess.run([str(exe), "plan", "prod-70b"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    assert "gpuinfra:aws:GpuNodePool" in result.stdout and "Traceback" not in result.stderr


def test_a_mandatory_violation_exits_1_with_the_reason(capsys):
    code, out, err = run("plan", "spot-32b", "--set", "instance_types=g6e.12xlarge", "--json", capsys=capsys)
    assert code == 1
    violations = json.loads(out)["violations"]
    assert {(v["policy"], v["enforcement"], v["resource"]) for v in violations} >= {
        ("spot-diversification", "mandatory", "gpuinfra-spot-32b-nodes-asg"),
        ("spot-pools-recommended", "advisory", "gpuinfra-spot-32b-nodes-asg")}
    assert "error: mandatory policy spot-diversification (gpuinfra-spot-32b-nodes-asg): spot with 1 instance" in err


def test_policy_config_file_tunes_the_rules(tmp_path, capsys):
    config = tmp_path / "policy.json"
    config.write_text(json.dumps({"required-tags": {"required_tags": ["owner", "team"]}}))
    code, out, _ = run("plan", "dev-7b", "--json", "--policy-config", str(config), capsys=capsys)
    violations = json.loads(out)["violations"]
    assert code == 0 and violations and {v["message"] for v in violations} == {"missing tags: team"}
    config.write_text("[1]")
    code, _, err = run("plan", "dev-7b", "--policy-config", str(config), capsys=capsys)
    assert code == 2 and "--policy-config" in err
