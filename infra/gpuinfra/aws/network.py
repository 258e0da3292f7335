"""Network: a VPC with private node subnets (or the user's subnets), egress, and the node security group.

Nodes never get public addresses. Egress is either a NAT gateway (the Hugging Face hub is reachable) or
VPC endpoints only (S3 gateway; SSM, ECR and STS interface endpoints). The node security group allows
all traffic to and from itself, which EFA requires (S16), and nothing from 0.0.0.0/0.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gpuinfra.config import CreateVpc, ExistingSubnets

# Interface endpoints a node needs with no internet route: SSM sessions, ECR image pulls, STS for roles.
INTERFACE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages", "ecr.api", "ecr.dkr", "sts", "logs")


@dataclass(frozen=True)
class SubnetPlan:
    """How the VPC CIDR is carved: node subnets take the first three quarters, one per zone; the last
    quarter holds the load balancer subnets (an ALB needs two zones) and the NAT's public subnet."""

    nodes: list[str]
    load_balancer: list[str]
    public: str

    @staticmethod
    def carve(cidr: str, node_zones: int) -> SubnetPlan:
        network = ipaddress.ip_network(cidr)
        quarters = list(network.subnets(prefixlen_diff=2))
        last = list(quarters[3].subnets(prefixlen_diff=2))
        return SubnetPlan(nodes=[str(q) for q in quarters[:node_zones]], load_balancer=[str(last[0]), str(last[1])],
                          public=str(last[2]))


@dataclass(frozen=True)
class NetworkArgs:
    settings: CreateVpc | ExistingSubnets
    region: str
    node_zones: list[str]  # one zone for multi-node (placement group), up to three otherwise
    load_balancer_zones: list[str]
    ssh_cidrs: list[str]
    with_load_balancer_subnets: bool
    tags: dict[str, str]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    node_subnet_ids: list[pulumi.Output[str]]
    load_balancer_subnet_ids: list[pulumi.Output[str]]
    node_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:aws:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        settings = args.settings
        if isinstance(settings, ExistingSubnets):
            self.vpc_id = pulumi.Output.from_input(settings.vpc_id)
            self.node_subnet_ids = [pulumi.Output.from_input(s) for s in settings.subnet_ids]
            self.load_balancer_subnet_ids = [pulumi.Output.from_input(s) for s in settings.load_balancer_subnet_ids]
        else:
            self._create_vpc(name, args, settings, child)
        self.node_security_group_id = self._node_security_group(name, args, child)
        self.register_outputs({
            "vpc_id": self.vpc_id,
            "node_subnet_ids": self.node_subnet_ids,
            "node_security_group_id": self.node_security_group_id,
        })

    def _create_vpc(self, name: str, args: NetworkArgs, settings: CreateVpc, child: pulumi.ResourceOptions) -> None:
        plan = SubnetPlan.carve(settings.cidr, len(args.node_zones))
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=settings.cidr, enable_dns_hostnames=True, enable_dns_support=True,
                          tags={**args.tags, "Name": f"{name}-vpc"}, opts=child)
        self.vpc_id = vpc.id
        private_routes = aws.ec2.RouteTable(f"{name}-private", vpc_id=vpc.id, tags={**args.tags, "Name":
                                            f"{name}-private"}, opts=child)
        self.node_subnet_ids = []
        for zone, cidr in zip(args.node_zones, plan.nodes, strict=True):
            subnet = aws.ec2.Subnet(f"{name}-nodes-{zone}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone,
                                    map_public_ip_on_launch=False,
                                    tags={**args.tags, "Name": f"{name}-nodes-{zone}", "gpuinfra:role": "nodes"},
                                    opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-nodes-{zone}", subnet_id=subnet.id,
                                          route_table_id=private_routes.id, opts=child)
            self.node_subnet_ids.append(subnet.id)
        self.load_balancer_subnet_ids = []
        if args.with_load_balancer_subnets:
            for zone, cidr in zip(args.load_balancer_zones, plan.load_balancer, strict=True):
                subnet = aws.ec2.Subnet(f"{name}-lb-{zone}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone,
                                        map_public_ip_on_launch=False,
                                        tags={**args.tags, "Name": f"{name}-lb-{zone}", "gpuinfra:role": "endpoint"},
                                        opts=child)
                aws.ec2.RouteTableAssociation(f"{name}-lb-{zone}", subnet_id=subnet.id,
                                              route_table_id=private_routes.id, opts=child)
                self.load_balancer_subnet_ids.append(subnet.id)
        if settings.egress == "nat":
            self._nat(name, args, vpc, plan, private_routes, child)
        else:
            self._endpoints(name, args, vpc, private_routes, child)

    def _nat(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, plan: SubnetPlan,
             private_routes: aws.ec2.RouteTable, child: pulumi.ResourceOptions) -> None:
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={**args.tags, "Name": f"{name}-igw"},
                                          opts=child)
        public = aws.ec2.Subnet(f"{name}-public", vpc_id=vpc.id, cidr_block=plan.public,
                                availability_zone=args.node_zones[0], map_public_ip_on_launch=False,
                                tags={**args.tags, "Name": f"{name}-public", "gpuinfra:role": "nat"}, opts=child)
        public_routes = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, routes=[
            aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags={**args.tags, "Name": f"{name}-public"}, opts=child)
        aws.ec2.RouteTableAssociation(f"{name}-public", subnet_id=public.id, route_table_id=public_routes.id,
                                      opts=child)
        address = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags={**args.tags, "Name": f"{name}-nat"}, opts=child)
        nat = aws.ec2.NatGateway(f"{name}-nat", allocation_id=address.id, subnet_id=public.id,
                                 tags={**args.tags, "Name": f"{name}-nat"},
                                 opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]))
        aws.ec2.Route(f"{name}-egress", route_table_id=private_routes.id, destination_cidr_block="0.0.0.0/0",
                      nat_gateway_id=nat.id, opts=child)

    def _endpoints(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc, private_routes: aws.ec2.RouteTable,
                   child: pulumi.ResourceOptions) -> None:
        aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
                            vpc_endpoint_type="Gateway", route_table_ids=[private_routes.id],
                            tags={**args.tags, "Name": f"{name}-s3"}, opts=child)
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints", vpc_id=vpc.id, description="HTTPS from inside the VPC to AWS service endpoints",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443,
                                                      cidr_blocks=[vpc.cidr_block], description="VPC")],
            tags={**args.tags, "Name": f"{name}-endpoints"}, opts=child)
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(f"{name}-{service.replace('.', '-')}", vpc_id=vpc.id,
                                service_name=f"com.amazonaws.{args.region}.{service}",
                                vpc_endpoint_type="Interface", private_dns_enabled=True,
                                subnet_ids=self.node_subnet_ids[:1], security_group_ids=[endpoint_sg.id],
                                tags={**args.tags, "Name": f"{name}-{service}"}, opts=child)

    def _node_security_group(self, name: str, args: NetworkArgs, child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        # Rules are separate resources (never inline) so the endpoint can add its own rule without the two
        # fighting over the group's rule set.
        group = aws.ec2.SecurityGroup(f"{name}-nodes", vpc_id=self.vpc_id,
                                      description="GPU nodes: EFA requires all traffic to and from itself",
                                      tags={**args.tags, "Name": f"{name}-nodes"}, opts=child)
        rule_tags = {**args.tags}
        aws.vpc.SecurityGroupIngressRule(f"{name}-nodes-self-in", security_group_id=group.id, ip_protocol="-1",
                                         referenced_security_group_id=group.id,
                                         description="EFA and NCCL between nodes (all traffic, self)",
                                         tags=rule_tags, opts=child)
        aws.vpc.SecurityGroupEgressRule(f"{name}-nodes-self-out", security_group_id=group.id, ip_protocol="-1",
                                        referenced_security_group_id=group.id,
                                        description="EFA and NCCL between nodes (all traffic, self)",
                                        tags=rule_tags, opts=child)
        aws.vpc.SecurityGroupEgressRule(f"{name}-nodes-out", security_group_id=group.id, ip_protocol="-1",
                                        cidr_ipv4="0.0.0.0/0", description="outbound: AWS endpoints, NAT, weights",
                                        tags=rule_tags, opts=child)
        for index, cidr in enumerate(args.ssh_cidrs):
            aws.vpc.SecurityGroupIngressRule(f"{name}-nodes-ssh-{index}", security_group_id=group.id,
                                             ip_protocol="tcp", from_port=22, to_port=22, cidr_ipv4=cidr,
                                             description="SSH from an operator network", tags=rule_tags, opts=child)
        return group.id
