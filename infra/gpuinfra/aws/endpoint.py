"""Serving endpoint: an internal Application Load Balancer that routes each request to the node with the
fewest outstanding requests (LLM requests vary by orders of magnitude in length, so round robin piles
long generations onto one node). Health comes from the inference server's /health."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class ServingEndpointArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    node_security_group_id: pulumi.Input[str]
    client_cidr: str | None  # who may call the endpoint; default: the VPC
    port: int
    tags: dict[str, str]


class ServingEndpoint(pulumi.ComponentResource):
    dns_name: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ServingEndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:aws:ServingEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(f"{name}-lb", vpc_id=args.vpc_id,
                                      description="internal inference endpoint", tags={**args.tags,
                                                                                      "Name": f"{name}-lb"},
                                      opts=child)
        client_cidr = args.client_cidr or aws.ec2.get_vpc_output(
            id=args.vpc_id, opts=pulumi.InvokeOutputOptions(parent=self)).cidr_block
        aws.vpc.SecurityGroupIngressRule(f"{name}-lb-clients", security_group_id=group.id, ip_protocol="tcp",
                                         from_port=80, to_port=80, cidr_ipv4=client_cidr,
                                         description="clients inside the VPC", tags=args.tags, opts=child)
        aws.vpc.SecurityGroupEgressRule(f"{name}-lb-to-nodes", security_group_id=group.id, ip_protocol="tcp",
                                        from_port=args.port, to_port=args.port,
                                        referenced_security_group_id=args.node_security_group_id,
                                        description="to the inference servers", tags=args.tags, opts=child)
        aws.vpc.SecurityGroupIngressRule(f"{name}-nodes-from-lb", security_group_id=args.node_security_group_id,
                                         ip_protocol="tcp", from_port=args.port, to_port=args.port,
                                         referenced_security_group_id=group.id,
                                         description="inference API from the internal load balancer",
                                         tags=args.tags, opts=child)
        balancer = aws.lb.LoadBalancer(f"{name}-alb", internal=True, load_balancer_type="application",
                                       subnets=args.subnet_ids, security_groups=[group.id],
                                       drop_invalid_header_fields=True,
                                       idle_timeout=600,  # long generations stream for minutes
                                       tags=args.tags, opts=child)
        target_group = aws.lb.TargetGroup(
            f"{name}-nodes", vpc_id=args.vpc_id, port=args.port, protocol="HTTP", target_type="instance",
            load_balancing_algorithm_type="least_outstanding_requests",
            deregistration_delay=120,
            health_check=aws.lb.TargetGroupHealthCheckArgs(path="/health", port="traffic-port", matcher="200",
                                                           interval=15, healthy_threshold=2, unhealthy_threshold=3),
            tags=args.tags, opts=child)
        aws.lb.Listener(f"{name}-http", load_balancer_arn=balancer.arn, port=80, protocol="HTTP",
                        default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward",
                                                                          target_group_arn=target_group.arn)],
                        tags=args.tags, opts=child)
        self.dns_name = balancer.dns_name
        self.target_group_arn = target_group.arn
        self.register_outputs({"dns_name": self.dns_name, "target_group_arn": self.target_group_arn})
