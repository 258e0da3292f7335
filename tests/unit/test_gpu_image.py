"""The GPU node image: the stack's ami_id wins, then the catalog's image pinned for the region; without
either, the family's newest image is looked up at deploy time, and the plan says so."""

from __future__ import annotations

import pytest
from gpuinfra.aws.node_pool import image_choice
from gpuinfra.catalog import load_catalog
from gpuinfra.catalog.schema import Catalog
from gpuinfra.plan import build_plan, resolve_stack
from gpuinfra.preview import run_offline

FAMILY = load_catalog().software.gpu_image
PINNED = FAMILY.model_copy(update={"region_ids": {"us-east-1": "ami-0aaaaaaaaaaaaaaa1"}})


def test_the_stack_ami_wins_over_a_pinned_region_image():
    choice = image_choice("ami-0bbbbbbbbbbbbbbb2", "us-east-1", PINNED)
    assert (choice.ami_id, choice.pinned_by) == ("ami-0bbbbbbbbbbbbbbb2", "stack")


def test_a_pinned_region_uses_the_catalog_image_and_others_look_up_the_family():
    assert image_choice(None, "us-east-1", PINNED).ami_id == "ami-0aaaaaaaaaaaaaaa1"
    looked_up = image_choice(None, "us-west-2", PINNED)
    assert looked_up.ami_id is None and looked_up.pinned_by is None
    assert "not pinned" in looked_up.describe() and FAMILY.name_pattern in looked_up.describe()


def test_the_plan_names_the_image_and_an_ami_id_reaches_every_launch_template():
    _, report = build_plan("prod-70b")
    assert "not pinned" in report.gpu_image  # the shipped catalog pins no region (no sourced ids)
    pinned = run_offline(resolve_stack("prod-70b", sets=["ami_id=ami-0123456789abcdef0"]))
    templates = [r for r in pinned.resources if r.type == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert templates and {t.inputs["imageId"] for t in templates} == {"ami-0123456789abcdef0"}


@pytest.mark.parametrize(("region_ids", "reason"), [
    ({"us-east-1": "ami-XYZ"}, "AMI ids"),
    ({"mars-north-1": "ami-0aaaaaaaaaaaaaaa1"}, "not a region"),
])
def test_the_catalog_refuses_bad_pins(region_ids, reason):
    catalog = load_catalog()
    data = catalog.model_dump()
    data["software"]["gpu_image"]["region_ids"] = region_ids
    with pytest.raises(ValueError, match=reason):
        Catalog.model_validate(data)

