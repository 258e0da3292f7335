"""The concepts of an on-demand environment, one frozen model each.

`Lifecycle` is what an environment promises (owner, lifetime, budget, price): it lives in the stack's
config (`gpuinfra:environment`, read by the Pulumi program), in the stack's tags (read by `env ls` and
the reaper) and, for the part that says who pays and until when, in the AWS tags of every resource.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuinfra.errors import InputError, Problem

TAG_PREFIX = "gpuinfra:"
STACK_TAG = "gpuinfra:stack"
ENVIRONMENT_CONFIG_KEY = "gpuinfra:environment"
# Lower-case letters, digits and dashes, at most 24: the name becomes a Pulumi stack name, an AWS tag value
# and the stem of AWS resource names (`gpuinfra-NAME-endpoint-...`), and load balancers and target groups
# allow 32 characters in all.
ENVIRONMENT_NAME = re.compile(r"[a-z]([a-z0-9-]{0,22}[a-z0-9])?")
# What AWS accepts in a tag value (EC2 User Guide, "Tag restrictions"), spaces but no other white space.
TAG_VALUE = re.compile(r"[\w .:/=+\-@]{1,256}")

# After the expiry, the reaper's turn; once this grace is over too, the environment's Auto Scaling group
# scales to zero (a scheduled action) and its nodes power themselves off (node_expiry role, whose
# node_expiry_grace_minutes default is the same 30 minutes; a test keeps them equal).
SWITCH_GRACE = timedelta(minutes=30)

State = Literal["creating", "ready", "serving", "idle", "expired", "failed"]


class Model(BaseModel):
    """Unknown fields are errors; values never change once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def utc_text(moment: datetime) -> str:
    """The one timestamp format of tags and JSON: UTC, whole seconds, `Z`."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def name_problems(name: str, flag: str = "--name") -> list[Problem]:
    if ENVIRONMENT_NAME.fullmatch(name or ""):
        return []
    return [Problem(flag, f"{name!r} is not an environment name: 1-24 lower-case letters, digits and dashes, "
                          "starting with a letter (it becomes the stack name and part of AWS resource names)")]


def owner_problems(owner: str) -> list[Problem]:
    if TAG_VALUE.fullmatch(owner or ""):
        return []
    return [Problem("--owner", f"{owner!r} must be 1-256 letters, digits, spaces or _ . : / = + - @ "
                               "(it becomes an AWS tag value)")]


class Lifecycle(Model):
    """An environment's owner, lifetime and money. The TTL counts from creation; only `env extend` moves
    `expires_at`, and never past what the budget pays for at `hourly_usd`."""

    environment_id: str = Field(pattern=r"^[0-9a-f]{12}$", description="Unique per environment, so a name "
                                "reused after a deletion never claims the old environment's resources")
    template: str = Field(description="The shipped stack (or stack file) the environment was created from")
    owner: str = Field(description="Who asked for it and answers for its cost (an AWS tag value)")
    created_at: datetime = Field(description="UTC; the TTL counts from here")
    expires_at: datetime = Field(description="UTC; after it the reaper destroys the environment and the nodes "
                                             "power themselves off (after a grace period)")
    hourly_usd: float = Field(ge=0, description="On-demand price of the whole pool at its most expensive "
                                                "launchable type (the plan's cost), fixed at creation")
    budget_usd: float | None = Field(None, ge=0, description="Most the environment may cost over its "
                                                             "lifetime; none: bounded by the TTL alone")
    idle_after_s: int | None = Field(None, ge=1, description="Destroy after this many seconds without a request "
                                                             "(measured by Prometheus); none: never idle-reaped")
    protected: bool = Field(False, description="The reaper leaves it alone (the nodes still stop at expiry)")

    @field_validator("owner", "template")
    @classmethod
    def _tag_value(cls, value: str) -> str:
        if not TAG_VALUE.fullmatch(value):
            raise ValueError("must be 1-256 letters, digits, spaces or _ . : / = + - @ (it becomes an AWS tag value)")
        return value

    @field_validator("created_at", "expires_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone")
        return value.astimezone(UTC).replace(microsecond=0)

    @property
    def ttl(self) -> timedelta:
        return self.expires_at - self.created_at

    def spend_usd(self, now: datetime) -> float:
        """What the environment has cost so far: its price times the hours since creation."""
        hours = max(0.0, (now - self.created_at).total_seconds() / 3600)
        return round(self.hourly_usd * hours, 2)

    def budget_left_usd(self, now: datetime) -> float | None:
        return None if self.budget_usd is None else round(self.budget_usd - self.spend_usd(now), 2)

    def aws_tags(self) -> dict[str, str]:
        """Mirrored on every launched resource: who pays, until when, how much."""
        tags = {
            "gpuinfra:environment-id": self.environment_id,
            "gpuinfra:template": self.template,
            "gpuinfra:owner": self.owner,
            "gpuinfra:created-at": utc_text(self.created_at),
            "gpuinfra:expires-at": utc_text(self.expires_at),
            "gpuinfra:hourly-usd": f"{self.hourly_usd:.2f}",
        }
        if self.budget_usd is not None:
            tags["gpuinfra:budget-usd"] = f"{self.budget_usd:.2f}"
        return tags

    def stack_tags(self) -> dict[str, str]:
        return {**self.aws_tags(), "gpuinfra:idle-after-s": str(self.idle_after_s or "off"),
                "gpuinfra:protected": "true" if self.protected else "false"}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lifecycle:
        """Read back what `stack_tags` wrote; ValueError for a stack gpuinfra did not create."""
        if "gpuinfra:environment-id" not in tags:
            raise ValueError("not a gpuinfra environment (no gpuinfra:environment-id tag)")
        idle = tags.get("gpuinfra:idle-after-s", "off")
        return cls(environment_id=tags["gpuinfra:environment-id"], template=tags["gpuinfra:template"],
                   owner=tags["gpuinfra:owner"], created_at=parse_utc(tags["gpuinfra:created-at"]),
                   expires_at=parse_utc(tags["gpuinfra:expires-at"]), hourly_usd=float(tags["gpuinfra:hourly-usd"]),
                   budget_usd=float(tags["gpuinfra:budget-usd"]) if "gpuinfra:budget-usd" in tags else None,
                   idle_after_s=None if idle == "off" else int(idle),
                   protected=tags.get("gpuinfra:protected") == "true")


def lifecycle_tags(environment: Any) -> dict[str, str]:
    """The AWS tags of the `gpuinfra:environment` config object; what the Pulumi program adds to every
    resource. An invalid object is an InputError naming its fields."""
    from pydantic import ValidationError

    from gpuinfra.errors import problems_from_validation_error

    try:
        return Lifecycle.model_validate(environment).aws_tags()
    except ValidationError as exc:
        raise InputError(problems_from_validation_error(exc, "environment")) from None


def drain_time(environment_tags: dict[str, str] | None) -> str | None:
    """When the environment's node pool scales to zero: its expiry plus the switch's grace (UTC text)."""
    if not environment_tags or "gpuinfra:expires-at" not in environment_tags:
        return None
    return utc_text(parse_utc(environment_tags["gpuinfra:expires-at"]) + SWITCH_GRACE)


class StateResource(Model):
    """One resource of a stack's state, as `pulumi stack export` shows it."""

    urn: str
    type: str
    custom: bool = Field(description="A cloud resource (false: a component or the stack itself)")
    id: str | None = None
    parent: str | None = Field(None, description="The parent's URN")
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    protect: bool = False
    external: bool = Field(False, description="Read with .get(), not created by the stack")
    import_id: str | None = Field(None, alias="importID", description="Adopted with `import`, not created")

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @property
    def tags(self) -> dict[str, str] | None:
        tags = self.outputs.get("tags", self.inputs.get("tags"))
        return tags if isinstance(tags, dict) else None


class StackSummary(Model):
    """A stack as the backend lists it."""

    name: str
    update_in_progress: bool = Field(description="Someone holds the stack's lock (an up or destroy runs)")
    lock_holder: str | None = Field(None, description="user@host (pid) of the lock, when one is held")
    resource_count: int = Field(ge=0)
    tags: dict[str, str] = Field(default_factory=dict)


class ServingRecord(Model):
    """What `env up --serve` found: where the model answers, how fast, and where its metrics are."""

    endpoint: str = Field(description="URL of the OpenAI-compatible API")
    ttft_s: float = Field(ge=0, description="Time to first token of the first completion")
    prometheus_url: str | None = Field(None, description="The monitoring role's Prometheus, for idle detection")

    def stack_tags(self) -> dict[str, str]:
        tags = {"gpuinfra:endpoint": self.endpoint, "gpuinfra:ttft-s": f"{self.ttft_s:.3f}"}
        if self.prometheus_url:
            tags["gpuinfra:prometheus-url"] = self.prometheus_url
        return tags


class EnvironmentStatus(Model):
    """One row of `env ls` (and its JSON): the keys are a contract."""

    name: str
    environment_id: str
    template: str
    owner: str
    state: State
    reason: str = Field(description="Why the state is what it is (expiry, activity, failure)")
    created_at: str
    age_hours: float
    expires_at: str
    expires_in_hours: float = Field(description="Negative once expired")
    hourly_usd: float
    spend_usd: float
    budget_usd: float | None
    budget_left_usd: float | None
    idle_after_s: int | None
    protected: bool
    update_in_progress: bool
    resources: int
    endpoint: str | None


ReapAction = Literal["keep", "skip", "refuse", "destroy", "would-destroy", "failed", "orphan"]


class ReapDecision(Model):
    """One decision of the reaper, printed as one log line."""

    environment: str | None = Field(description="The stack; none for an orphan")
    action: ReapAction
    reason: str
    resources: Annotated[list[str], Field(default_factory=list, description="URNs or ARNs concerned")]

    def log_line(self) -> str:
        subject = self.environment or "-"
        return f"reap {self.action} {subject}: {self.reason}"
