"""On-demand environments: `gpuinfra env up/ls/extend/down/reap`.

An environment is a Pulumi stack created from a shipped template (`stacks/Pulumi.<template>.yaml`) with a
lifetime (TTL counted from creation), an optional budget, an owner and an idle limit. The lifecycle is
stored as stack tags and mirrored as AWS tags on every launched resource; the reaper destroys what is
expired, over budget or idle. See docs/environments.md.
"""
