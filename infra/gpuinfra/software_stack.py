"""The pinned software stack as the document the Ansible roles read (`gpuinfra_software`): the catalog's
software.yaml less its sources, read without the catalog's models.

`gpuinfra catalog software --json` prints it on every Ansible run that does not carry it in the inventory
(preflight's lookup, once per run, with every host waiting): importing pydantic and validating the whole
catalog cost about 0.5-0.9 s of a ~10 s no-op rerun. The file is validated with the rest of the catalog by
`load_catalog()` (the test suite does, and so does every command that sizes); a test checks that this
document holds every value the file sets as the model reads it (the model's defaults for what the file leaves
unset, such as an engine's unknown memory figures, are the sizing engine's and are not in it).
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources

import yaml

# Left out of the document: which reference each pin comes from is for people, not for the roles.
NOT_FOR_HOSTS = frozenset({"sources"})


@cache
def _raw() -> dict:
    # Files under the gpuinfra package, not gpuinfra.catalog: importing that package loads the models.
    text = resources.files("gpuinfra").joinpath("catalog", "data", "software.yaml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["software"]


def software_document() -> dict:
    """A fresh copy of the document (callers may change theirs)."""
    return {key: copy.deepcopy(value) for key, value in _raw().items() if key not in NOT_FOR_HOSTS}
