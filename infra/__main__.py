"""`pulumi up --stack <name>`: the whole program lives in gpuinfra.aws.program."""

from gpuinfra.aws.program import main

main()
