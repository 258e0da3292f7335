"""Bad input never crashes and never slips through: one table per category of the bad-input probe.

Each case runs the real CLI entry point and asserts the exit code (2 bad input, 1 infeasible), one
`error:` line naming the field or flag with its reason, no traceback or internal error, and that nothing
was written. A few cases run the installed `gpuinfra` as a process, as a user would.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpuinfra.cli import main
from gpuinfra.config import STACKS_DIR
from gpuinfra.inventory import read_inventory_yaml

DEV_7B = yaml.safe_load((STACKS_DIR / "Pulumi.dev-7b.yaml").read_text())["config"]["gpuinfra:cluster"]
GPUINFRA = Path(sys.executable).with_name("gpuinfra")


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ROOT with its content (None for directories): what a run may not change."""
    return {str(p.relative_to(root)): (None if p.is_dir() or not p.is_file() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def cli(*argv: str, cwd: Path, capsys) -> tuple[int, str, str]:
    """Run the CLI in CWD; assert it wrote nothing there and printed no traceback."""
    before = tree(cwd)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        out = io.StringIO()
        code = main(list(argv), out=out)
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if code not in (0, 1):
        assert tree(cwd) == before, "a failed run changed files"
        assert out.getvalue() == "", "a failed run printed a result"
    return code, out.getvalue(), err


def expect(code: int, err: str, wanted_code: int, *fragments: str) -> None:
    assert code == wanted_code, err
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line.startswith("error: ") for line in lines), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def stack_text(cluster: dict | None = None, **changes) -> str:
    return yaml.safe_dump({"config": {"gpuinfra:cluster": {**(cluster or DEV_7B), **changes}}}, sort_keys=False)


# --- stack files ------------------------------------------------------------------------------------------

DUPLICATE_BLOCK = """config:
  gpuinfra:cluster:
    model: deepseek-r1
    weights: {source: hf://deepseek-ai/DeepSeek-R1}
  gpuinfra:cluster:
    model: deepseek-r1-distill-qwen-7b
    weights: {source: hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}
"""
DUPLICATE_FIELD = """config:
  gpuinfra:cluster:
    model: deepseek-r1-distill-qwen-7b
    weights: {source: hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}
    model: deepseek-r1
"""
ALIAS_BOMB = "config:\n  gpuinfra:cluster:\n    tags:\n" + "".join(
    f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['x'] * 9)}]\n" for i in range(9))
DEEP = "config:\n  gpuinfra:cluster:\n    tags: " + "[" * 5000 + "]" * 5000 + "\n"


@pytest.mark.parametrize(("content", "fragments"), [
    (DUPLICATE_BLOCK, ["config.gpuinfra:cluster: is given twice (lines 2 and 5)"]),
    (DUPLICATE_FIELD, ["config.gpuinfra:cluster.model: is given twice (lines 3 and 5)"]),
    ("config: [1, 2]\n", ["config: must be a mapping, got a list"]),
    ("config: just text\n", ["config: must be a mapping, got a string"]),
    ("config:\n  gpuinfra:cluster: [model]\n", ["config.gpuinfra:cluster: must be a mapping, got a list"]),
    ("- a\n- b\n", ["must be a mapping with a config: key, got a list"]),
    ("", ["is empty"]),
    ("config: {\n", ["not valid YAML"]),
    (ALIAS_BOMB, ["expands to more than 100,000 values"]),
    (DEEP, ["nests deeper than 64 levels"]),
    (stack_text(sla={"ttft_p99_s": "INFINITY"}).replace("INFINITY", ".inf"),
     ["sla.ttft_p99_s: must be a finite number"]),
    (stack_text(hourly_budget_usd="NOT_A_NUMBER").replace("NOT_A_NUMBER", ".nan"),
     ["hourly_budget_usd: must be a finite"]),
    (stack_text(concurrency="X").replace("concurrency: X", "concurrency: !!int abc"), ["not valid YAML"]),
    (stack_text(region="X").replace("region: X", "region: !!timestamp x"), ["not valid YAML"]),
    (stack_text(model="X").replace("model: X", "model: !!binary ZGVlcHNlZWs="), ["not valid YAML"]),
    (stack_text(tags="X").replace("tags: X", "tags: &a [*a]"), ["an alias inside its own anchor"]),
    (stack_text(context_tokens="X").replace("context_tokens: X", "context_tokens: " + "9" * 5000),
     ["not valid YAML"]),
    (stack_text() + "    1: x\n", ["keys must be text, not int"]),
], ids=["duplicate-block", "duplicate-field", "config-list", "config-string", "cluster-list", "top-list", "empty",
        "broken-yaml", "alias-bomb", "deep-nesting", "sla-inf", "budget-nan", "int-tag", "timestamp-tag", "binary-tag",
        "recursive-alias", "huge-int", "int-key"])
def test_malformed_stack_files_are_refused(tmp_path, capsys, content, fragments):
    stack = tmp_path / "Pulumi.t.yaml"
    stack.write_text(content)
    code, _, err = cli("plan", "t", "--stack-file", str(stack), cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, *fragments)


def test_binary_and_unreadable_stack_files_are_refused(tmp_path, capsys):
    binary = tmp_path / "Pulumi.bin.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    fifo = tmp_path / "Pulumi.fifo.yaml"
    os.mkfifo(fifo)
    (tmp_path / "Pulumi.dir.yaml").mkdir()
    (tmp_path / "Pulumi.link.yaml").symlink_to(tmp_path / "nowhere")
    big = tmp_path / "Pulumi.big.yaml"
    big.write_text("# padding\n" * 200_000)
    for path, fragment in ((binary, "is not UTF-8 text"), (fifo, "is not a regular file"),
                           (tmp_path / "Pulumi.dir.yaml", "is a directory"), (tmp_path / "Pulumi.link.yaml",
                                                                              "no such file"),
                           (big, "is larger than 1024 KiB")):
        code, _, err = cli("plan", "--stack-file", str(path), cwd=tmp_path, capsys=capsys)
        expect(code, err, 2, fragment)


def test_stack_name_comes_from_the_stack_file_name(tmp_path, capsys):
    stack = tmp_path / "Pulumi.my-dev.yaml"
    stack.write_text(stack_text())
    code, out, err = cli("plan", "--stack-file", str(stack), "--json", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["stack"] == "my-dev"
    code, _, err = cli("plan", cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, "STACK: give a stack name, or --stack-file PATH")
    for bad in ("../../etc/passwd", "a b", "x" * 200, "-rf"):
        code, _, err = cli("plan", bad, cwd=tmp_path, capsys=capsys)
        assert code == 2 and "STACK" in err and "is not a stack name" in err or "unrecognized" in err, err


@pytest.mark.parametrize(("setting", "fragment"), [
    ("bogus", "--set: 'bogus' is not FIELD=VALUE"),
    ("=1", "has no field name"),
    ("Model=x", "is not a field path"),
    ("model.name=x", "--set model.name: model is a string, not a mapping"),
    ("tags={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b],"
     " d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}", "expands to more than"),
    ("concurrency=.inf", "must be a finite number"),
    ("context_tokens=[1]", "cluster.context_tokens"),
    ("instance_types=g6.2xlarge,g6.2xlarge", "cluster.instance_types.1: g6.2xlarge is listed twice"),
])
def test_bad_overrides_are_refused(tmp_path, capsys, setting, fragment):
    code, _, err = cli("plan", "dev-7b", "--set", setting, cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, fragment)


def test_a_field_set_twice_is_refused(tmp_path, capsys):
    code, _, err = cli("plan", "dev-7b", "--set", "concurrency=4", "--set", "concurrency=400000", cwd=tmp_path,
                       capsys=capsys)
    expect(code, err, 2, "--set: concurrency is set twice")


# --- security and placement -------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "fragments"), [
    ({"access": {"ssh_cidrs": ["0.0.0.0/1", "128.0.0.0/1"], "ssh_key_name": "k"}},
     ["cluster.access.ssh_cidrs: together these open SSH to the whole IPv4 internet"]),
    ({"access": {"ssh_cidrs": ["::/0"], "ssh_key_name": "k"}}, ["the whole IPv6 internet"]),
    ({"access": {"ssh_cidrs": ["10.0.0.1/8"], "ssh_key_name": "k"}}, ["'10.0.0.1/8' is not a CIDR block"]),
    ({"availability_zone": "us-east-10a"}, ["cluster.availability_zone: 'us-east-10a' is not a zone of region"]),
    ({"region": "zz-nowhere-9"}, ["cluster.region: 'zz-nowhere-9' is not an AWS region"]),
    ({"region": "us-east-10"}, ["did you mean us-east-1"]),
    ({"tags": {"aws:owner": "x"}}, ["cluster.tags.aws:owner: keys starting with aws: or gpuinfra: are reserved"]),
    ({"tags": {"gpuinfra:stack": "other"}}, ["are reserved"]),
    ({"tags": {"k" * 129: "v"}}, ["a tag key must be 1-128 characters"]),
    ({"tags": {"owner": "v" * 257}}, ["a tag value must be at most 256 characters"]),
    ({"tags": {f"t{i}": "v" for i in range(31)}}, ["31 tags: at most 30"]),
    ({"tags": {"owner": "{{ lookup('pipe', 'id') }}"}}, ["the value may hold only letters"]),
    ({"sla": {"ttft_p99_s": 0}}, ["cluster.sla.ttft_p99_s"]),
    # Found by the adversarial probe: values that widened the node role's IAM policy or slipped past a check.
    ({"weights": {"source": "s3://acme-ml-models/*"}}, ["cluster.weights.source", "no wildcards"]),
    ({"weights": {"source": "s3://acme-ml-models/${aws:username}"}}, ["cluster.weights.source"]),
    ({"weights": {"source": "s3://a..b/x"}}, ["may not hold `..`"]),
    ({"weights": {"source": "hf://../.."}}, ["cluster.weights.source"]),
    ({"weights": {"source": "hf://deepseek-ai/x", "revision": "--hf-endpoint=http://evil.example"}},
     ["cluster.weights.revision: must be a commit sha, tag or branch"]),
    ({"tags": {"owner": "a\nb"}}, ["cluster.tags.owner: the value may hold only"]),
    ({"tags": {"owner": "a\tb"}}, ["cluster.tags.owner: the value may hold only"]),
    ({"endpoint": {"enabled": "yes"}}, ["cluster.endpoint.enabled: Input should be a valid boolean"]),
    ({"access": {"ssm": "true"}}, ["cluster.access.ssm: Input should be a valid boolean"]),
    ({"concurrency": "4"}, ["cluster.concurrency: Input should be a valid integer"]),
    ({"context_tokens": 16384.0}, ["cluster.context_tokens: Input should be a valid integer"]),
    ({"nodes": True}, ["cluster.nodes: Input should be a valid integer"]),
])
def test_security_and_placement_values_are_refused(tmp_path, capsys, changes, fragments):
    stack = tmp_path / "Pulumi.t.yaml"
    stack.write_text(stack_text(**changes))
    code, _, err = cli("plan", "t", "--stack-file", str(stack), cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, *fragments)


# --- --policy-config --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "fragments"), [
    ({"gpu-sizing": {"enforcementLevel": "Mandatory"}}, ["gpu-sizing.enforcementLevel: 'Mandatory' is not one of"]),
    ({"gpu-sizing": "mandatroy"}, ["'mandatroy' is not one of advisory, mandatory, remediate, disabled"]),
    ({"gpu-sizing": {"suggestions": "three"}}, ["gpu-sizing.suggestions: 'three' is not of type 'integer'"]),
    ({"gpu-sizing": {"suggestions": -1}}, ["gpu-sizing.suggestions: -1 is less than the minimum of 0"]),
    ({"gpu-sizing": {"sugestions": 1}}, ["'sugestions' was unexpected"]),
    ({"gpu-sizng": "mandatory"}, ["gpu-sizng: unknown policy"]),
    ({"gpu-sizing": 3}, ["gpu-sizing: must be an enforcement level or an object"]),
    ({"all": {"enforcementLevel": "off"}}, ["all.enforcementLevel: 'off' is not one of"]),
    ([1, 2], ["must hold a JSON object, got a list"]),
    ({"capacity-reservation-match": {"reservations": {"cr-0123456789abcdef0": "x"}}},
     ["capacity-reservation-match.reservations.cr-0123456789abcdef0: 'x' is not of type 'object'"]),
])
def test_policy_config_is_checked_against_levels_and_schemas(tmp_path, capsys, config, fragments):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(config))
    code, _, err = cli("plan", "dev-7b", "--policy-config", str(path), cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, *fragments)


def test_policy_config_levels_take_effect(tmp_path, capsys):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"all": "disabled"}))
    code, out, err = cli("plan", "dev-7b", "--policy-config", str(path), "--json", cwd=tmp_path, capsys=capsys)
    assert code == 0 and json.loads(out)["violations"] == []
    path.write_text(json.dumps({"required-tags": {"enforcementLevel": "mandatory", "required_tags": ["team"]}}))
    code, out, err = cli("plan", "dev-7b", "--policy-config", str(path), cwd=tmp_path, capsys=capsys)
    assert code == 1 and "error: mandatory policy required-tags" in err


# --- gpuinfra inventory -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r1_outputs() -> dict:
    out = io.StringIO()
    assert main(["plan", "prod-r1", "--json"], out=out) == 0
    return json.loads(out.getvalue())["outputs"]


@pytest.mark.parametrize(("change", "fragments"), [
    ({"instance_types": None}, ["--outputs.instance_types: Input should be a valid list"]),
    ({"instance_types": "p5.48xlarge"}, ["--outputs.instance_types: Input should be a valid list"]),
    ({"instance_types": ["p5.48xlarge", "p9.huge"]}, ["--outputs.instance_types.1: unknown instance type"]),
    ({"nodes": "2"}, ["--outputs.nodes: Input should be a valid integer"]),
    ({"nodes": 3}, ["nodes 3 is not a whole number of copies of 2"]),
    ({"region": "us-east-1'}}{{ lookup('pipe','id') }}"}, ["--outputs.region:", "is not an AWS region"]),
    ({"stack": "prod-r1; rm -rf /"}, ["--outputs.stack:", "is not a stack name"]),
    ({"request": {"model": "x", "concurrency": "many"}}, ["--outputs.request.concurrency: Input should be a valid"]),
    ({"node_plans": {}}, ["node_plans has no plan for p5.48xlarge"]),
    ({"sla": {"ttft_p99_s": "fast"}}, ["--outputs.sla.ttft_p99_s"]),
])
def test_inventory_outputs_are_type_checked(tmp_path, capsys, r1_outputs, change, fragments):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({**r1_outputs, **change}))
    code, _, err = cli("inventory", "prod-r1", "--outputs", str(path), "--output", str(tmp_path / "inv"),
                       cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, *fragments)


@pytest.mark.parametrize(("hosts", "fragment"), [
    ("", "--hosts: names no host"),
    (",,,", "--hosts: names no host"),
    ("999.1.1.1,10.0.0.2", "'999.1.1.1' looks like an IPv4 address but is not a valid one"),
    ("a b;rm -rf /,10.0.0.2", "'a b;rm -rf /' is neither an IP address nor a host name"),
    ("{{7*7}},10.0.0.2", "is neither an IP address nor a host name"),
    ("10.0.0.1,10.0.0.1", "10.0.0.1 is given twice"),
    ("node-1.example.com,NODE-1.example.com", "is given twice"),
    ("10.0.0.1", "1 hosts is not a whole number of model copies: one copy spans 2 nodes"),
    ("h1,h2,h3,h4", "4 hosts, but stack prod-r1 has 2 node(s)"),
    ("h1=p4d.24xlarge,h2", "'p4d.24xlarge' is not one of the stack's instance types"),
    ("0.0.0.0,10.0.0.2", "is not a host's address"),
    ("255.255.255.255,10.0.0.2", "is not a host's address"),
    ("h1\n=p5.48xlarge,h2=p5.48xlarge", "is neither an IP address nor a host name"),
])
def test_inventory_hosts_are_checked(tmp_path, capsys, hosts, fragment):
    code, _, err = cli("inventory", "prod-r1", "--hosts", hosts, cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, fragment)


def test_inventory_accepts_addresses_and_names(tmp_path, capsys):
    code, out, err = cli("inventory", "prod-r1", "--hosts", "10.0.0.5,gpu-2.lab.example", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert set(read_inventory_yaml(out)["all"]["children"]["gpu_nodes"]["hosts"]) == {"10.0.0.5", "gpu-2.lab.example"}
    code, _, err = cli("inventory", "prod-r1", "--hosts", "fd00::5,fd00::6", cwd=tmp_path, capsys=capsys)
    assert code == 0, err


def test_inventory_output_that_is_a_file_or_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code, _, err = cli("inventory", "prod-r1", "--output", str(tmp_path / "taken"), cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, "--output:", "exists and is not a directory")
    code, _, err = cli("inventory", "prod-r1", "--output", str(tmp_path / "taken" / "inv"), cwd=tmp_path,
                       capsys=capsys)
    expect(code, err, 2, "--output:", "is not a directory")
    assert (tmp_path / "taken").read_text() == "mine"


def test_inventory_output_is_all_or_nothing(tmp_path, capsys):
    target = tmp_path / "inv"
    code, _, err = cli("inventory", "prod-r1", "--output", str(target), cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    (target / "host_vars").mkdir()
    (target / "host_vars" / "keep.yml").write_text("mine: 1\n")
    first = tree(target)
    # A directory where the group_vars file must go: the write fails half-way through staging.
    blocked = tmp_path / "blocked"
    (blocked / "group_vars" / "gpu_nodes.yml").mkdir(parents=True)
    (blocked / "aws_ec2.yml").write_text("old: source\n")
    before = tree(blocked)
    code, _, err = cli("inventory", "prod-r1", "--output", str(blocked), cwd=tmp_path, capsys=capsys)
    assert code == 2 and "nothing was changed" in err
    assert tree(blocked) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "inv"], "staging directories left behind"
    # Regeneration keeps the directory's other files.
    code, _, err = cli("inventory", "prod-r1", "--output", str(target), cwd=tmp_path, capsys=capsys)
    assert code == 0 and tree(target) == first


def test_inventory_output_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path, capsys):
    real = tmp_path / "inventories" / "prod"
    real.mkdir(parents=True)
    (real / "host_vars").mkdir()
    (real / "host_vars" / "keep.yml").write_text("mine: 1\n")
    link = tmp_path / "inv"
    link.symlink_to(real, target_is_directory=True)
    code, _, err = cli("inventory", "prod-r1", "--output", str(link), cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "aws_ec2.yml").is_file() and (real / "host_vars" / "keep.yml").read_text() == "mine: 1\n"


@pytest.mark.slow  # real gpuinfra and ansible processes
def test_input_values_are_data_not_code(tmp_path, r1_outputs):
    """A hostile value in the outputs reaches Ansible as the literal string: never rendered."""
    hostile = "{{ lookup('pipe', 'touch " + str(tmp_path / "pwned") + "') }}"
    outputs = {**r1_outputs, "weights": {**r1_outputs["weights"], "source": hostile}}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    inventory = tmp_path / "inv.yml"
    result = subprocess.run([str(GPUINFRA), "inventory", "prod-r1", "--outputs", str(tmp_path / "outputs.json"),
                             "--hosts", "h1,h2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    inventory.write_text(result.stdout)
    shown = subprocess.run([str(Path(sys.executable).with_name("ansible")), "-i", str(inventory), "h1", "-c",
                            "local", "-m", "ansible.builtin.debug", "-a", "msg={{ gpuinfra_weights.source }}"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "lookup('pipe'" in shown.stdout and not (tmp_path / "pwned").exists()


def test_aws_ec2_source_holds_no_input_in_compose(tmp_path, capsys):
    code, _, err = cli("inventory", "prod-r1", "--output", str(tmp_path / "inv"), cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    source = yaml.safe_load((tmp_path / "inv" / "aws_ec2.yml").read_text())
    assert "us-east-1" not in json.dumps(source["compose"]) and "prod-r1" not in json.dumps(source["compose"])
    group_vars = read_inventory_yaml((tmp_path / "inv" / "group_vars" / "gpu_nodes.yml").read_text())
    assert group_vars["ansible_aws_ssm_region"] == "us-east-1"


# --- --model-config ---------------------------------------------------------------------------------------

def _catalog_config(slug: str) -> dict:
    models = yaml.safe_load((Path(__file__).resolve().parents[2] / "infra/gpuinfra/catalog/data/models.yaml")
                            .read_text())["models"]
    return next(m["config"] for m in models if m["slug"] == slug)


LLAMA_8B = _catalog_config("deepseek-r1-distill-llama-8b")
R1 = _catalog_config("deepseek-r1")


@pytest.mark.parametrize(("config", "fragments"), [
    ({**LLAMA_8B, "head_dim": "x"}, ["head_dim: must be a positive integer, got 'x'"]),
    ({**R1, "first_k_dense_replace": [3]}, ["first_k_dense_replace: must be an integer >= 0, got [3]"]),
    ({**LLAMA_8B, "model_type": "mistral", "num_local_experts": 8, "num_experts_per_tok": 2},
     ["num_local_experts: 8 routed experts: a mixture-of-experts model with model_type 'mistral'"]),
    ({**LLAMA_8B, "num_experts": 64}, ["num_experts: 64 routed experts"]),
    ({**LLAMA_8B, "hidden_size": 0}, ["hidden_size: must be a positive integer"]),
    ({**LLAMA_8B, "num_attention_heads": -32}, ["num_attention_heads: must be a positive integer"]),
    ({**LLAMA_8B, "num_hidden_layers": 10**12}, ["num_hidden_layers: must be a positive integer up to 1,024"]),
    ({**LLAMA_8B, "tie_word_embeddings": "yes"}, ["tie_word_embeddings: must be true or false"]),
    ({**LLAMA_8B, "attention_bias": "yes"}, ["attention_bias: must be true or false"]),
    ({**LLAMA_8B, "torch_dtype": 16}, ["torch_dtype: must be a string"]),
    ({**LLAMA_8B, "quantization_config": "fp8"}, ["quantization_config: must be an object"]),
    ({**LLAMA_8B, "model_type": ["llama"]}, ["unsupported model_type ['llama']"]),
    ([LLAMA_8B], ["config.json must hold a JSON object, got list"]),
    ({**LLAMA_8B, "num_local_experts": "8", "num_experts_per_tok": 2}, ["num_local_experts: '8' routed experts"]),
    ({**LLAMA_8B, "num_local_experts": 8.0}, ["num_local_experts: 8.0 routed experts"]),
    ({**LLAMA_8B, "moe_num_experts": 64, "moe_k": 8}, ["moe_num_experts: 64 routed experts"]),
    ({**LLAMA_8B, "num_experts_per_tok": 2, "moe_intermediate_size": 1408}, ["num_experts_per_tok: 2: a mixture"]),
    ({**LLAMA_8B, "text_config": {"num_local_experts": 8}}, ["text_config: a nested text_config"]),
    ({**LLAMA_8B, "torch_dtype": "float64"}, ["torch_dtype: 'float64' is not a checkpoint dtype"]),
])
def test_bad_model_configs_are_refused(tmp_path, capsys, config, fragments):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, _, err = cli("size", "--model-config", str(path), "--gpu", "h100", "--gpus-per-node", "1", cwd=tmp_path,
                       capsys=capsys)
    expect(code, err, 2, *fragments)


def test_model_config_files_are_bounded(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    duplicate = tmp_path / "dup.json"
    duplicate.write_text('{"hidden_size": 1, "hidden_size": 4096}')
    nan = tmp_path / "nan.json"
    nan.write_text('{"rope_theta": NaN}')
    for path, fragment in ((Path("/dev/zero"), "is not a regular file"), (deep, "nests deeper than 64 levels"),
                           (duplicate, "key 'hidden_size' is given twice"), (nan, "NaN is not a finite number"),
                           (tmp_path / "missing.json", "no such file")):
        code, _, err = cli("size", "--model-config", str(path), "--gpu", "h100", "--gpus-per-node", "1",
                           cwd=tmp_path, capsys=capsys)
        expect(code, err, 2, "--model-config", fragment)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--gpu", "h100", "--gpus-per-node", "1000000"], "--gpus-per-node: must be at most 16, got 1000000"),
    (["--gpu", "h100", "--gpus-per-node", "0"], "--gpus-per-node: must be greater than 0"),
    (["--instance-type", "p5.48xlarge", "--nodes", "100000"], "--nodes: must be at most 64"),
    (["--max-nodes", "100000"], "--max-nodes: must be at most 64"),
    (["--concurrency", "10000000000"], "--concurrency: must be at most 65,536"),
    (["--context", "1e9"], "--context: must be a whole number, got '1e9'"),
    (["--concurrency", "1_000"], "--concurrency: must be a whole number, got '1_000'"),
    (["--concurrency", "\uff18"], "--concurrency: must be a whole number"),  # a fullwidth 8
    (["--gpu-memory-utilization", "0.\u0669"], "--gpu-memory-utilization: must be a number"),  # Arabic-Indic 9
    (["--gpu-memory-utilization", "nan"], "--gpu-memory-utilization: must be a finite number"),
    (["--gpu-memory-utilization", "inf"], "--gpu-memory-utilization: must be a finite number"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: must be at most 1"),
    (["--precision", "fp4"], "invalid choice: 'fp4'"),
    (["--gpus-per-node", "2"], "--gpus-per-node: needs --gpu"),
    (["--gpus", "8"], "unrecognized arguments: --gpus 8"),
    (["--gpu", "h100", "--gpus-per-node", "1", "--ttft-p99", "0.1"], "--ttft-p99: is the planner's SLA"),
])
def test_impossible_size_arguments_are_refused(tmp_path, capsys, argv, fragment):
    code, _, err = cli("size", "deepseek-r1-distill-llama-8b", *argv, cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, fragment)


# --- exit codes -------------------------------------------------------------------------------------------

def test_one_exit_code_rule_for_every_command(tmp_path, capsys):
    code, _, err = cli("size", "deepseek-r1", "--instance-type", "p5.48xlarge", cwd=tmp_path, capsys=capsys)
    assert code == 1  # infeasible
    code, _, err = cli("plan", "dev-7b", "--set", "model=deepseek-r1", "--set", "instance_types=g6.2xlarge",
                       cwd=tmp_path, capsys=capsys)
    expect(code, err, 1, "cluster.instance_types.0: g6.2xlarge x 1 node(s)")
    code, _, err = cli("plan", "dev-7b", "--set", "hourly_budget_usd=0.1", cwd=tmp_path, capsys=capsys)
    expect(code, err, 1, "cluster.hourly_budget_usd: 1 x g6.2xlarge cost", "over the $0.10/h budget")
    code, _, err = cli("inventory", "dev-7b", "--set", "hourly_budget_usd=0.1", "--output", str(tmp_path / "i"),
                       cwd=tmp_path, capsys=capsys)
    assert code == 1 and not (tmp_path / "i").exists()


def test_an_unexpected_failure_is_one_line_and_exit_3(tmp_path, capsys, monkeypatch):
    import gpuinfra.plan

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gpuinfra.plan, "build_plan", broken)
    assert main(["plan", "dev-7b"], out=io.StringIO()) == 3
    err = capsys.readouterr().err
    assert err.startswith("internal error: RuntimeError: disk on fire") and "Traceback" not in err
    assert main(["plan", "dev-7b", "--debug"], out=io.StringIO()) == 3
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow  # real gpuinfra processes
@pytest.mark.parametrize("argv", [
    ["plan", "prod-7b"],
    ["inventory", "prod-r1", "--hosts", "a b"],
    ["size", "--model-config", "/dev/zero", "--gpu", "h100", "--gpus-per-node", "1"],
])
def test_a_real_process_reports_bad_input_without_a_traceback(argv):
    result = subprocess.run([str(GPUINFRA), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize(("argv", "fragment"), [
    (["env", "reap", "--region", "zz-nowhere-9"], "--region: 'zz-nowhere-9' is not an AWS region"),
    (["env", "reap", "--region", "{{x}}"], "--region: '{{x}}' is not an AWS region"),
    (["env", "up", "dev-7b", "--name", "t1", "--budget", "50", "--owner="], "--owner: is empty"),
    (["env", "up", "dev-7b", "--name", "t1", "--ttl", "99999999999h", "--budget", "50"], "is longer than 365 days"),
    (["plan", "eks-70b", "--set", 'target.monitoring="no"'], "cluster.target.eks.monitoring"),
    (["plan", "dev-7b", "--set", 'availability_zone=""'], "cluster.availability_zone: '' is not a zone"),
])
def test_probe_findings_are_refused(tmp_path, capsys, argv, fragment):
    if argv[0] == "env":
        argv = [*argv, "--engine", "standin", "--backend", f"file://{tmp_path / 'state'}"]
    code, _, err = cli(*argv, cwd=tmp_path, capsys=capsys)
    expect(code, err, 2, fragment)

