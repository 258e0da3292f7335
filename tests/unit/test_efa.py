"""EFA interface layout: one per network card, types and device indexes per the EC2 rules."""

from __future__ import annotations

import pytest
from gpuinfra.catalog import find_instance_type, load_catalog
from gpuinfra.efa import efa_interfaces


@pytest.mark.parametrize("instance", [i for i in load_catalog().instances if i.efa.supported], ids=lambda i: i.name)
def test_one_interface_per_network_card_with_efa_on_card_0(instance):
    interfaces = efa_interfaces(instance)
    assert len(interfaces) == instance.efa.max_interfaces == instance.network.cards
    assert [i.network_card_index for i in interfaces] == list(range(instance.network.cards))
    assert (interfaces[0].device_index, interfaces[0].interface_type) == (0, "efa")
    assert all(i.device_index == 1 for i in interfaces[1:])
    assert all(i.launch_template_args(["sg-1"])["associate_public_ip_address"] == "false" for i in interfaces)


@pytest.mark.parametrize(("name", "cards"), [("p4d.24xlarge", 4), ("p5en.48xlarge", 16), ("p6-b200.48xlarge", 8)])
def test_other_multi_card_types_are_efa_only_beyond_card_0(name, cards):
    interfaces = efa_interfaces(find_instance_type(name))
    assert len(interfaces) == cards and {i.interface_type for i in interfaces[1:]} == {"efa-only"}


@pytest.mark.parametrize("name", ["p5.48xlarge", "p5e.48xlarge"])
def test_p5_and_p5e_spread_ena_over_every_fourth_card(name):
    interfaces = efa_interfaces(find_instance_type(name))
    assert len(interfaces) == 32
    assert [i.network_card_index for i in interfaces if i.interface_type == "efa"] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_types_without_efa_get_one_plain_interface():
    assert [(i.network_card_index, i.device_index, i.interface_type)
            for i in efa_interfaces(find_instance_type("g6e.xlarge"))] == [(0, 0, "interface")]
