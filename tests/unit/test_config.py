"""Stack config: every shipped stack resolves; bad stack files report every problem, with paths."""

from __future__ import annotations

import pytest
from gpuinfra.config import STACKS_DIR, load_stack, parse_cluster, parse_override, resolve
from gpuinfra.errors import InputError

SHIPPED = ["dev-7b", "eks-70b", "eks-r1", "prod-70b", "prod-r1", "spot-32b"]
BASE = {"model": "deepseek-r1-distill-qwen-7b", "weights": {"source": "hf://deepseek-ai/x"}}


def problems(raw) -> dict[str, str]:
    with pytest.raises(InputError) as caught:
        resolve("test", parse_cluster(raw))
    found: dict[str, str] = {}
    for problem in caught.value.problems:
        found[problem.path] = "; ".join(filter(None, [found.get(problem.path), problem.reason]))
    return found


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_shipped_stack_resolves_and_fits_every_instance_type(stack):
    cluster = load_stack(stack)
    assert cluster.evaluations and all(e.feasible for e in cluster.evaluations)
    assert sorted(p.name for p in STACKS_DIR.glob("Pulumi.*.yaml")) == sorted(f"Pulumi.{s}.yaml" for s in SHIPPED)


def test_shipped_stacks_are_what_they_say():
    assert load_stack("prod-r1").primary.pipeline_parallel == 2 and load_stack("prod-r1").config.nodes == 2
    assert load_stack("spot-32b").config.capacity.type == "spot" and len(load_stack("spot-32b").evaluations) >= 3
    assert load_stack("dev-7b").primary.gpus_per_node == 1


def test_absent_instance_types_are_derived_from_the_sizing_engine():
    on_demand = resolve("t", parse_cluster({**BASE}))
    assert [e.instance_type for e in on_demand.evaluations] == ["g6.2xlarge"]  # the cheapest that fits
    spot = resolve("t", parse_cluster({**BASE, "capacity": {"type": "spot"}}))
    assert len(spot.evaluations) > 5 and all(e.feasible for e in spot.evaluations)


def test_every_problem_is_reported_at_once_with_its_path():
    found = problems({
        "model": "deepseek-r1-distill-llama-70b", "weights": {"source": "ftp://x"}, "nodes": 2, "nodes_per_copy": 2,
        "instance_types": ["g6e.xlarge", "p9.large"], "concurrency": -1, "capactiy": {"type": "spot"},
        "access": {"ssh_cidrs": ["0.0.0.0/0"]},
    })
    assert found["cluster.weights.source"].startswith("must be s3://bucket[/prefix] or hf://org/repo")
    assert found["cluster.concurrency"] == "Input should be greater than 0"
    assert found["cluster.capactiy"] == "unknown field (check the spelling)"
    assert "opens SSH to the whole IPv4 internet" in found["cluster.access.ssh_cidrs"]
    assert found["cluster.instance_types.0"] == "g6e.xlarge has no EFA; a model copy spans 2 nodes and needs it"
    assert "unknown instance type 'p9.large'" in found["cluster.instance_types.1"]
    assert "is required: a model copy spans 2 nodes" in found["cluster.availability_zone"]
    assert "give one instance type" in found["cluster.instance_types"]


@pytest.mark.parametrize(
    ("overrides", "path", "text"),
    [
        ({"instance_types": ["g6e.xlarge"], "model": "deepseek-r1-distill-llama-70b"}, "cluster.instance_types.0",
         "weights need 131.4 GiB per GPU"),
        ({"capacity": {"type": "spot", "reservation_id": "cr-0123456789abcdef0"}},
         "cluster.capacity.spot.reservation_id", "unknown field"),
        ({"capacity": {"type": "capacity-block"}}, "cluster.capacity.capacity-block.reservation_id", "Field required"),
        ({"capacity": {"type": "capacity-block", "reservation_id": "cr-0123456789abcdef0"}},
         "cluster.availability_zone", "required with a capacity reservation"),
        ({"region": "us-east-1", "availability_zone": "eu-west-1a"}, "cluster.availability_zone",
         "is not a zone of region us-east-1"),
        ({"nodes": -2}, "cluster.nodes", "greater than or equal to 1"),
        ({"hourly_budget_usd": 0.5}, "cluster.instance_types", "within $0.50/h"),
        ({"hourly_budget_usd": 0.5, "instance_types": ["g6.2xlarge"]}, "cluster.hourly_budget_usd",
         "over the $0.50/h budget"),
        ({"nodes": 3, "nodes_per_copy": 2}, "cluster.nodes", "not a whole number of copies"),
        ({"access": {"ssm": False}}, "cluster.access", "enable ssm or give ssh_cidrs"),
        ({"network": {"mode": "existing", "vpc_id": "vpc-123"}}, "cluster.network.existing.vpc_id", "pattern"),
        ({"model": "deepseek-r2"}, "cluster.model", "did you mean deepseek-r1"),
        ({"context_tokens": 500000}, "cluster.context_tokens", "exceeds the model's max_position_embeddings"),
        ({"sla": {"error_rate": 2}}, "cluster.sla.error_rate", "less than or equal to 1"),
        ({"sla": {"p99": 1}}, "cluster.sla.p99", "unknown field"),
    ],
)
def test_bad_stack_values_are_rejected_with_their_path(overrides, path, text):
    found = problems({**BASE, **overrides})
    assert path in found, found
    assert text in found[path]


def test_overrides_parse_like_the_cli():
    assert parse_override("nodes=64") == ("nodes", 64)
    assert parse_override("instance_types=g6e.xlarge,g6e.2xlarge") == ("instance_types", ["g6e.xlarge", "g6e.2xlarge"])
    assert parse_override("capacity.type=spot") == ("capacity.type", "spot")
    with pytest.raises(InputError, match="is not FIELD=VALUE"):
        parse_override("nodes")


def test_nodes_are_copies_times_span():
    """nodes is the pool; the span per copy is the fewest nodes that serve the request, unless given."""
    single = resolve("t", parse_cluster({**BASE, "nodes": 4}))
    assert single.nodes_per_copy == 1 and single.copies == 4
    assert single.max_cost_per_hour_usd == round(4 * single.primary.cost_per_hour_usd, 2)
    r1 = {"model": "deepseek-r1", "weights": {"source": "s3://bkt/r1"}, "instance_types": ["p5.48xlarge"],
          "availability_zone": "us-east-1a"}
    spanning = resolve("t", parse_cluster({**r1, "nodes": 4}))
    assert spanning.nodes_per_copy == 2 and spanning.copies == 2
    found = problems({**r1, "availability_zone": None, "nodes": 2})
    assert "a model copy spans 2 nodes" in found["cluster.availability_zone"]
