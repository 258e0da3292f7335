"""The Kubernetes target: the same stack config and sizing plan, served on EKS or on an existing cluster.

`target.py` holds the stack-file block (imported by gpuinfra.config, so it imports nothing heavy);
`serving_plan.py` turns a resolved cluster into the pod plan (GPUs, memory, shm, probes, engine argv);
the components (`cluster.py`, `workload.py`, `monitoring.py`) declare typed pulumi-kubernetes and
pulumi-aws resources from it, so the offline plan and the policy pack see every object.
"""
