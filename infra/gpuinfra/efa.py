"""EFA network-interface layout per instance type, from the catalog (one interface per network card).

Card 0, device 0 is the primary interface and carries the node's IP traffic, so it is `efa` (EFA with
ENA). Every other card gets one interface at device index 1, `efa-only` (RDMA traffic only, no IP
address used), as pulumi-eks and the EC2 user guide lay it out (S16). P5 and P5e, with 32 cards, need
ENA spread over the cards for full bandwidth: every 4th card is `efa` there (EC2 user guide "EFA
configuration for P5 and P5e"; dstack PR #2271). Instances with several interfaces cannot take an
auto-assigned public IP, so GPU nodes never get one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpuinfra.catalog import InstanceType

InterfaceType = Literal["efa", "efa-only", "interface"]
# Families whose 32 network cards want ENA on every 4th card (S16).
ENA_EVERY_FOURTH_CARD = {"p5", "p5e"}


@dataclass(frozen=True)
class NetworkInterfaceSpec:
    network_card_index: int
    device_index: int
    interface_type: InterfaceType

    def launch_template_args(self, security_group_ids: list[str], subnet_id: str | None = None) -> dict:
        """The fields of an EC2 launch-template network interface (snake_case, as pulumi_aws takes them)."""
        args = {
            "network_card_index": self.network_card_index,
            "device_index": self.device_index,
            "interface_type": self.interface_type,
            "security_groups": security_group_ids,
            "associate_public_ip_address": "false",
            "delete_on_termination": "true",
        }
        if subnet_id:
            args["subnet_id"] = subnet_id
        return args


def efa_interfaces(instance: InstanceType) -> list[NetworkInterfaceSpec]:
    """The interfaces to attach: one EFA per network card when the type has EFA, else one plain ENA."""
    if not instance.efa.supported:
        return [NetworkInterfaceSpec(0, 0, "interface")]
    count = instance.efa.max_interfaces
    every_fourth = instance.family in ENA_EVERY_FOURTH_CARD
    interfaces = [NetworkInterfaceSpec(0, 0, "efa")]
    for card in range(1, count):
        kind: InterfaceType = "efa" if every_fourth and card % 4 == 0 else "efa-only"
        interfaces.append(NetworkInterfaceSpec(card, 1, kind))
    return interfaces
