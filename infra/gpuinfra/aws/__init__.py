"""The Pulumi AWS program: one ComponentResource per concept, assembled by `program.declare`."""
