"""`gpuinfra env ...`: up, ls, extend, down, reap, protect, clock (stand-in engine only).

Exit codes (the project's): 0 ok; 1 refused (budget, capacity, mandatory policy, a name already taken, a
protected environment, an update in progress) with nothing created or changed; 2 bad input, one
`error: <flag>: <reason>` line per problem, nothing written.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuinfra.environments.durations import format_duration, parse_duration
from gpuinfra.errors import InputError, Problem

if TYPE_CHECKING:
    from gpuinfra.environments.models import EnvironmentStatus

ENGINE_ENV = "GPUINFRA_ENGINE"
HOME_ENV = "GPUINFRA_HOME"
DEFAULT_TTL, DEFAULT_IDLE = "8h", "30m"
EXIT_OK, EXIT_REFUSED = 0, 1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an internal error, print the traceback")
    parser.add_argument("--engine", choices=["pulumi", "standin"], default=None,
                        help=f"pulumi: the Automation API (needs the pulumi CLI); standin: the STAND-IN engine "
                             f"(real program under mocks, nothing created). Default: ${ENGINE_ENV} or pulumi")
    parser.add_argument("--backend", metavar="URL", help="file://PATH or s3://bucket/prefix "
                                                         "(default: $GPUINFRA_BACKEND or file://~/.gpuinfra/state)")
    parser.add_argument("--cloud", choices=["aws", "standin"], default=None,
                        help="who answers capacity checks and orphan scans (default: aws with the pulumi engine, "
                             "the STAND-IN cloud with the standin engine)")


def add_env_parser(subparsers) -> None:
    env = subparsers.add_parser("env", help="on-demand environments: up, ls, extend, down, reap")
    commands = env.add_subparsers(dest="env_command", required=True, parser_class=type(env))
    up = commands.add_parser("up", help="create an environment from a template, refusing what the budget or "
                                        "capacity cannot carry")
    up.add_argument("template", nargs="?", metavar="TEMPLATE", help="a shipped stack (stacks/Pulumi.<TEMPLATE>.yaml)")
    up.add_argument("--stack-file", metavar="FILE", help="a stack file instead of a shipped template")
    up.add_argument("--name", required=True, help="the environment (and stack) name")
    up.add_argument("--ttl", default=DEFAULT_TTL, help=f"lifetime from creation (default {DEFAULT_TTL})")
    up.add_argument("--budget", metavar="USD", help="most it may cost over its lifetime")
    up.add_argument("--owner", help="who answers for it (default: the current user)")
    up.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the template's gpuinfra:cluster (repeatable)")
    up.add_argument("--idle-after", default=DEFAULT_IDLE, metavar="DURATION",
                    help=f"destroy after this long without requests (default {DEFAULT_IDLE}; off: never)")
    up.add_argument("--protect", action="store_true", help="the reaper leaves it alone")
    up.add_argument("--prometheus", metavar="URL", help="a Prometheus that scrapes the server's /metrics (job "
                                                        "inference), for idle detection; --serve finds its own")
    up.add_argument("--skip-capacity-checks", action="store_true",
                    help="do not ask EC2/Service Quotas before creating (e.g. no read access to quotas)")
    up.add_argument("--serve", action="store_true", help="inventory, host bring-up and serving (site.yml), "
                                                         "then the first completion")
    up.add_argument("--hosts-inventory", metavar="FILE",
                    help="with --serve: a static Ansible inventory of the hosts (default: the stack's EC2 nodes)")
    up.add_argument("--json", action="store_true")
    ls = commands.add_parser("ls", help="environments with their cost, expiry, budget left and state")
    ls.add_argument("--json", action="store_true")
    extend = commands.add_parser("extend", help="lengthen the TTL (never past the budget)")
    extend.add_argument("name", metavar="NAME")
    extend.add_argument("--ttl", required=True, help="how much longer, e.g. 4h")
    extend.add_argument("--json", action="store_true")
    down = commands.add_parser("down", help="destroy an environment and remove its stack")
    down.add_argument("name", metavar="NAME")
    down.add_argument("--json", action="store_true")
    reap = commands.add_parser("reap", help="destroy what is expired, over budget or idle (dry run without --yes)")
    reap.add_argument("--yes", action="store_true", help="really destroy")
    reap.add_argument("--region", dest="regions", action="append", default=[],
                      help="where to look for orphans (default: the regions of the environments and templates)")
    reap.add_argument("--json", action="store_true")
    protect = commands.add_parser("protect", help="keep an environment from the reaper (--off: allow it again)")
    protect.add_argument("name", metavar="NAME")
    protect.add_argument("--off", action="store_true")
    clock = commands.add_parser("clock", help="STAND-IN engine only: show or advance its simulated clock")
    clock.add_argument("--advance", metavar="DURATION")
    for parser in (up, ls, extend, down, reap, protect, clock):
        _common(parser)


def build_context(args: argparse.Namespace):
    from gpuinfra.environments.backend import Backend, StandinClock, SystemClock, backend_url, open_store
    from gpuinfra.environments.cloud import AwsCloud, StandinCloud
    from gpuinfra.environments.context import Context
    from gpuinfra.environments.idle import probe
    from gpuinfra.environments.progress import Stages

    engine_kind = args.engine or os.environ.get(ENGINE_ENV) or "pulumi"
    if engine_kind not in ("pulumi", "standin"):
        raise InputError([Problem("--engine", f"{engine_kind!r} (from ${ENGINE_ENV}) is not pulumi or standin")])
    store = open_store(backend_url(args.backend))
    backend = Backend(store)
    cloud_kind = args.cloud or ("standin" if engine_kind == "standin" else "aws")
    cloud = StandinCloud(store) if cloud_kind == "standin" else AwsCloud()
    if engine_kind == "standin":
        from gpuinfra.environments.standin import StandinEngine

        engine, clock = StandinEngine(backend, StandinCloud(store)), StandinClock(store)
    else:
        from gpuinfra.environments.pulumi_engine import PulumiEngine

        if shutil.which("pulumi") is None:
            raise InputError([Problem("--engine", "the pulumi engine needs the `pulumi` CLI on PATH "
                                                  "(https://www.pulumi.com/docs/install/); --engine standin runs the "
                                                  "STAND-IN engine instead")])
        engine, clock = PulumiEngine(backend), SystemClock()
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".gpuinfra")
    return Context(engine=engine, backend=backend, clock=clock, cloud=cloud, stages=Stages(),
                   probe=lambda url, window: probe(url, window), home=home)


def _budget(text: str | None, problems: list[Problem]) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(Problem("--budget", f"must be a number of US dollars, got {text!r}"))
        return None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        problems.append(Problem("--budget", f"must be 0 or more, got {text}"))
        return None
    return value


def _duration(text: str, flag: str, problems: list[Problem]) -> timedelta | None:
    try:
        return parse_duration(text, flag)
    except InputError as exc:
        problems.extend(exc.problems)
        return None


def up_request(args: argparse.Namespace):
    """Every flag of `env up` checked at once; nothing has been read from the backend yet."""
    from gpuinfra.environments.lifecycle import UpRequest
    from gpuinfra.environments.models import name_problems, owner_problems

    problems = name_problems(args.name)
    if args.owner is not None and not args.owner.strip():
        problems.append(Problem("--owner", "is empty; name who answers for the environment, or leave the flag out"))
    owner = args.owner or os.environ.get("USER") or getpass.getuser()
    problems += owner_problems(owner)
    if bool(args.template) == bool(args.stack_file):
        problems.append(Problem("TEMPLATE", "give a shipped template or --stack-file, not both or neither"))
    ttl = _duration(args.ttl, "--ttl", problems)
    idle = None if args.idle_after == "off" else _duration(args.idle_after, "--idle-after", problems)
    budget = _budget(args.budget, problems)
    if args.prometheus and not re.fullmatch(r"https?://[\w.\-]+(:\d{1,5})?(/[\w.\-/]*)?", args.prometheus):
        problems.append(Problem("--prometheus", f"{args.prometheus!r} is not an http(s)://host[:port][/path] URL"))
    if args.hosts_inventory and not args.serve:
        problems.append(Problem("--hosts-inventory", "is for --serve"))
    if args.hosts_inventory and not Path(args.hosts_inventory).is_file():
        problems.append(Problem("--hosts-inventory", f"{args.hosts_inventory} does not exist"))
    if problems:
        raise InputError(problems)
    return UpRequest(template=args.template, stack_file=args.stack_file, name=args.name, ttl=ttl, budget_usd=budget,
                     owner=owner, sets=args.sets, idle_after=idle, protected=args.protect,
                     skip_capacity_checks=args.skip_capacity_checks, prometheus_url=args.prometheus)


def _up(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.lifecycle import Refused, find_environment, status_of, up_environment
    from gpuinfra.environments.reap import PHASE_TAG
    from gpuinfra.environments.serve import ServeFailed, serve_environment

    request = up_request(args)
    lifecycle, outputs = up_environment(request, ctx)
    serving = None
    if args.serve:
        try:
            serving = serve_environment(ctx, request.name, lifecycle, outputs,
                                        Path(args.hosts_inventory) if args.hosts_inventory else None)
        except ServeFailed as exc:
            ctx.engine.set_tags(request.name, {PHASE_TAG: "failed", "gpuinfra:failure": "serve failed"})
            raise Refused([exc.problem]) from None
        ctx.engine.set_tags(request.name, {PHASE_TAG: "serving", **serving.stack_tags()})
    summary, lifecycle = find_environment(ctx, request.name)
    status = status_of(summary, lifecycle, ctx.clock.now(), None)
    if args.json:
        document = {**status.model_dump(mode="json"), "ttft_s": serving.ttft_s if serving else None}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(f"environment {status.name} ({status.template}) is {status.state}: ${status.hourly_usd:.2f}/h, "
                  f"expires {status.expires_at} (in {format_duration(lifecycle.expires_at - ctx.clock.now())})"
                  + (f", budget ${status.budget_usd:.2f} (${status.budget_left_usd:.2f} left)"
                     if status.budget_usd is not None else "") + "\n")
        if serving:
            out.write(f"endpoint {serving.endpoint}: first token after {serving.ttft_s:.3f}s\n")
    return EXIT_OK


def render_table(rows: list[EnvironmentStatus], out) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("NAME", "TEMPLATE", "OWNER", "STATE", "AGE", "EXPIRES", "$/H", "SPENT", "BUDGET LEFT"):
        table.add_column(column)
    for row in rows:
        expires = f"in {format_duration(timedelta(hours=row.expires_in_hours))}" if row.expires_in_hours > 0 else \
            f"{format_duration(timedelta(hours=-row.expires_in_hours))} ago"
        table.add_row(row.name, row.template, row.owner, row.state, format_duration(timedelta(hours=row.age_hours)),
                      f"{row.expires_at} ({expires})", f"{row.hourly_usd:.2f}", f"{row.spend_usd:.2f}",
                      "-" if row.budget_left_usd is None else f"{row.budget_left_usd:.2f}")
    Console(file=out, width=200).print(table)


def _ls(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.lifecycle import statuses

    rows = statuses(ctx)
    if args.json:
        out.write(json.dumps([r.model_dump(mode="json") for r in rows], indent=2) + "\n")
    elif rows:
        render_table(rows, out)
    else:
        out.write(f"no environments in {ctx.backend.store.url}\n")
    return EXIT_OK


def _extend(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.lifecycle import extend_environment
    from gpuinfra.environments.models import utc_text
    from gpuinfra.environments.serve import refresh_expiry

    problems: list[Problem] = []
    by = _duration(args.ttl, "--ttl", problems)
    if problems:
        raise InputError(problems)
    assert by is not None
    extended = extend_environment(ctx, args.name, by)
    moved = refresh_expiry(ctx, args.name, extended)
    if args.json:
        out.write(json.dumps({"name": args.name, "expires_at": utc_text(extended.expires_at),
                              "nodes_updated": moved}, indent=2) + "\n")
    else:
        out.write(f"environment {args.name} now expires at {utc_text(extended.expires_at)} (TTL "
                  f"{format_duration(extended.ttl)} from creation)\n")
    return EXIT_OK


def _down(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.lifecycle import down_environment

    decision = down_environment(ctx, args.name)
    out.write(json.dumps(decision.model_dump(mode="json"), indent=2) + "\n" if args.json
              else decision.log_line() + "\n")
    return EXIT_OK


def reap_regions(ctx, given: list[str]) -> list[str]:
    """Where orphans may be: the regions asked for, else every environment's and every template's region."""
    if given:
        from gpuinfra.catalog import region_problem

        problems = [Problem("--region", problem) for problem in map(region_problem, given) if problem]
        if problems:
            raise InputError(problems)
        return given
    from gpuinfra.config import STACKS_DIR, ClusterConfig, load_stack

    regions = set()
    for summary in ctx.engine.list_stacks():
        try:
            cluster = ctx.engine.settings(summary.name)["config"]["gpuinfra:cluster"]
        except Exception:  # a stack without gpuinfra settings: nothing to learn from it
            continue
        regions.add(cluster.get("region", ClusterConfig.model_fields["region"].default))
    for path in STACKS_DIR.glob("Pulumi.*.yaml"):
        try:
            regions.add(load_stack(path.name.removeprefix("Pulumi.").removesuffix(".yaml")).config.region)
        except InputError:
            continue
    return sorted(regions)


def _reap(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.reap import reap

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else out, flush=True)

    decisions = reap(ctx, act=args.yes, regions=reap_regions(ctx, args.regions), log=log)
    if args.json:
        out.write(json.dumps([d.model_dump(mode="json") for d in decisions], indent=2) + "\n")
    refused = [d for d in decisions if d.action in ("refuse", "failed")]
    return EXIT_REFUSED if refused else EXIT_OK


def _protect(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.lifecycle import protect_environment

    changed = protect_environment(ctx, args.name, not args.off)
    out.write(f"environment {args.name} is {'protected' if changed.protected else 'not protected'}\n")
    return EXIT_OK


def _clock(args: argparse.Namespace, ctx, out) -> int:
    from gpuinfra.environments.backend import StandinClock
    from gpuinfra.environments.models import utc_text

    if not isinstance(ctx.clock, StandinClock):
        raise InputError([Problem("--engine", "env clock moves the STAND-IN engine's clock; use --engine standin")])
    if args.advance:
        problems: list[Problem] = []
        by = _duration(args.advance, "--advance", problems)
        if problems:
            raise InputError(problems)
        assert by is not None
        ctx.clock.advance(by)
    out.write(f"stand-in clock: {utc_text(ctx.clock.now())} ({format_duration(ctx.clock.offset())} ahead)\n")
    return EXIT_OK


ENV_COMMANDS: dict[str, Any] = {"up": _up, "ls": _ls, "extend": _extend, "down": _down, "reap": _reap,
                                "protect": _protect, "clock": _clock}


def run_env(args: argparse.Namespace, out) -> int:
    """Handler of `gpuinfra env`. Bad input (InputError, exit 2) and refusals (InfeasibleError, exit 1) go up to
    the CLI, which prints one `error:` line per problem."""
    if args.env_command == "up":
        up_request(args)  # bad input is reported before the backend is opened
    return ENV_COMMANDS[args.env_command](args, build_context(args), out)
