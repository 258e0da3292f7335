"""Lookup plugin: ansible.builtin.template, without a deep copy of every variable at each call.

ansible-core's template lookup deep-copies all of a task's variables before it adds the template's own
(`template_path`, ...) to the copy: about 20 ms a call here, and the probes render a template per managed file on
every no-op rerun (about 0.4 s of CPU a run on three hosts). A template cannot change the variables it reads,
so this plugin hands the lookup a mapping whose deep copy is a shallow one; the rendering is the lookup's own.
The probes compare these renderings with what the template action writes (a rerun that changes nothing shows
that they agree).
"""

from __future__ import annotations

from ansible.plugins.lookup.template import LookupModule as TemplateLookup

# The options are the template lookup's; ansible-core reads a plugin's options from this text in its own file.
DOCUMENTATION = """
    name: gpuinfra_template
    short_description: ansible.builtin.template without copying every variable at each call
    description:
      - The template lookup of ansible-core (same options, same rendering), handed the variables without the deep
        copy it makes of them.
    options:
      _terms:
        description: list of files to template
      convert_data:
        type: bool
        description: Unused (as in ansible.builtin.template).
        default: true
      variable_start_string:
        description: The string marking the beginning of a print statement.
        default: '{{'
        type: str
      variable_end_string:
        description: The string marking the end of a print statement.
        default: '}}'
        type: str
      jinja2_native:
        description: Unused (as in ansible.builtin.template).
        default: True
        type: bool
      template_vars:
        description: A dictionary, the keys become additional variables available for templating.
        default: {}
        type: dict
      comment_start_string:
        description: The string marking the beginning of a comment statement.
        type: str
        default: '{#'
      comment_end_string:
        description: The string marking the end of a comment statement.
        type: str
        default: '#}'
      trim_blocks:
        description: Whether the first newline after a block is removed.
        type: bool
        default: yes
"""

RETURN = """
_raw:
   description: file(s) content after templating
   type: list
   elements: raw
"""


class _ShallowOnDeepCopy(dict):
    """The variables, copied shallowly where the lookup deep-copies them (it only adds keys to its copy)."""

    def __deepcopy__(self, memo):
        return dict(self)


class LookupModule(TemplateLookup):
    def run(self, terms, variables=None, **kwargs):
        return super().run(terms, _ShallowOnDeepCopy(variables or {}), **kwargs)
