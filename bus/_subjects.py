"""Names and subjects: the only place a subject is built from a name.

Tenant, agent and topic names become subject tokens, stream names and KV
bucket names, so they are checked here against one pattern before any of them
is built (nats-py would reject whitespace, but a ``.``, ``*`` or ``>`` in a
name would silently widen a subject).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from trustbus.bus._errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"  # \Z: "$" would match before a final newline
RECIPIENT_PATTERN = r"^(topic:)?[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"
_NAME = re.compile(NAME_PATTERN)
_EFFECT_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

TOPIC_PREFIX = "topic:"
MAX_PARTITIONS = 1024


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is a valid tenant, agent or topic name, else raise ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def stream_name(tenant: str) -> str:
    """The tenant's stream, ``TB_<tenant>``."""
    return f"TB_{check_name(tenant, what='tenant')}"


def given_up_stream(tenant: str) -> str:
    """The stream ``TBADV_<tenant>`` holding the server's advisories of messages it stopped redelivering.

    Its name cannot be another tenant's stream (those all start ``TB_``).
    """
    return f"TBADV_{check_name(tenant, what='tenant')}"


GIVEN_UP_CONSUMER = "recorder"  # the one consumer of the given-up stream, shared by every ledger service


def given_up_advisories(tenant: str) -> str:
    """The server's MAX_DELIVERIES advisories for every consumer of the tenant's stream."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name(tenant)}.*"


def keyring_bucket(tenant: str) -> str:
    """The KV bucket holding the tenant's keyring."""
    return f"tb_keys_{check_name(tenant, what='tenant')}"


def memory_bucket(tenant: str) -> str:
    """The KV bucket holding the tenant's agent memory."""
    return f"tb_mem_{check_name(tenant, what='tenant')}"


def all_subjects(tenant: str) -> str:
    """Every subject of the tenant, ``tb.<tenant>.>``."""
    return f"tb.{check_name(tenant, what='tenant')}.>"


def absolute(tenant: str, subject: str) -> str:
    """A subject or filter of ``tenant`` given relative to it (``decision.*``) or whole (``tb.<tenant>.decision.*``).

    Raises ConfigError for one of another tenant.
    """
    prefix = f"tb.{check_name(tenant, what='tenant')}."
    if subject.startswith(prefix):
        return subject
    if subject.startswith("tb."):
        raise ConfigError(f"{subject!r} is not a subject of tenant {tenant!r}: those start with {prefix!r}")
    return prefix + subject


def relative(tenant: str, subject: str) -> str:
    """``subject`` without its ``tb.<tenant>.`` prefix (as people read and type it)."""
    return subject.removeprefix(f"tb.{tenant}.")


def partition_of(correlation_id: str, partitions: int) -> int:
    """The partition of a correlation: its SHA-256, modulo the tenant's partition count.

    Everything about one correlation (its envelopes, effect records, approvals
    and decisions) lives in one partition, so the coordinator that owns the
    partition holds the correlation's whole state.
    """
    check_partitions(partitions)
    return int.from_bytes(hashlib.sha256(correlation_id.encode()).digest()[:8], "big") % partitions


def check_partitions(partitions: int) -> int:
    """Return ``partitions`` if it is a valid partition count (1 to MAX_PARTITIONS), else raise ConfigError."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"invalid partition count {partitions}: use 1 to {MAX_PARTITIONS}")
    return partitions


def outbox(tenant: str, agent: str, partition: int) -> str:
    """Where ``agent`` publishes an envelope of ``partition``: ``tb.<tenant>.out.<agent>.<partition>``."""
    return f"{own_outboxes(tenant, agent)[:-2]}.{partition:d}"


def own_outboxes(tenant: str, agent: str) -> str:
    """All of ``agent``'s outbox subjects, ``tb.<tenant>.out.<agent>.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.out.{check_name(agent, what='agent')}.*"


def partition_outboxes(tenant: str, partition: int) -> str:
    """Every agent's outbox in one partition, ``tb.<tenant>.out.*.<partition>``."""
    return f"tb.{check_name(tenant, what='tenant')}.out.*.{partition:d}"


def inbox(tenant: str, agent: str) -> str:
    """Where the coordinator delivers to ``agent``: ``tb.<tenant>.in.<agent>``."""
    return f"tb.{check_name(tenant, what='tenant')}.in.{check_name(agent, what='agent')}"


def all_inboxes(tenant: str) -> str:
    """Every agent's inbox, ``tb.<tenant>.in.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.in.*"


def inbox_consumer(agent: str) -> str:
    """The durable pull consumer on ``agent``'s inbox, ``in-<agent>``: made by the coordinator, read by the agent."""
    return f"in-{check_name(agent, what='agent')}"


def reply_prefix(owner: str) -> str:
    """``owner``'s own reply-subject prefix, ``_INBOX_<owner>`` (nats-py ``connect(inbox_prefix=...)``).

    Every user but the admin may subscribe only under its own prefix, so no
    client can read another's replies (JetStream acks, fetched messages).
    """
    return f"_INBOX_{check_name(owner, what='owner')}"


def topic(tenant: str, name: str) -> str:
    """A topic: ``tb.<tenant>.topic.<name>``."""
    return f"tb.{check_name(tenant, what='tenant')}.topic.{check_name(name, what='topic')}"


def all_topics(tenant: str) -> str:
    """Every topic, ``tb.<tenant>.topic.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.topic.*"


def decision(tenant: str, partition: int) -> str:
    """One partition's decision log: ``tb.<tenant>.decision.<partition>``."""
    return f"{all_decisions(tenant)[:-2]}.{partition:d}"


def all_decisions(tenant: str) -> str:
    """Every partition's decisions, ``tb.<tenant>.decision.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.decision.*"


def is_decision(tenant: str, subject: str) -> bool:
    """Whether ``subject`` is a decision log subject of the tenant."""
    prefix, _, partition = subject.rpartition(".")
    return prefix == all_decisions(tenant)[:-2] and partition.isdigit()


def effect(tenant: str, agent: str) -> str:
    """The prefix of an agent runtime's effect records: ``tb.<tenant>.effect.<agent>`` (one call per subject below)."""
    return f"tb.{check_name(tenant, what='tenant')}.effect.{check_name(agent, what='agent')}"


def check_effect_key(key: str) -> str:
    """Return ``key`` if it can end an effect subject (1-64 of ``[A-Za-z0-9_-]``), else raise ConfigError."""
    if not _EFFECT_KEY.fullmatch(key):
        raise ConfigError(f"invalid effect idempotency key {key!r}: use 1-64 letters, digits, '_' or '-'")
    return key


def effect_record(tenant: str, agent: str, partition: int, key: str) -> str:
    """The records of one effect (one call, every phase): ``tb.<tenant>.effect.<agent>.<partition>.<key>``.

    ``partition`` is that of the correlation of the envelope that caused the call.
    """
    return f"{effect(tenant, agent)}.{partition:d}.{check_effect_key(key)}"


def partition_effects(tenant: str, partition: int) -> str:
    """Every agent's effect records in one partition, ``tb.<tenant>.effect.*.<partition>.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.effect.*.{partition:d}.*"


def approval(tenant: str, partition: int) -> str:
    """Approvals of envelopes held in ``partition``: ``tb.<tenant>.approval.<partition>``."""
    return f"{all_approvals(tenant)[:-2]}.{partition:d}"


def all_approvals(tenant: str) -> str:
    """Every partition's approvals, ``tb.<tenant>.approval.*``."""
    return f"tb.{check_name(tenant, what='tenant')}.approval.*"


def quarantine(tenant: str) -> str:
    """Rejected envelopes: ``tb.<tenant>.quarantine``."""
    return f"tb.{check_name(tenant, what='tenant')}.quarantine"


def coordinator_bucket(tenant: str) -> str:
    """The KV bucket where coordinators lease partitions, ``tb_coord_<tenant>``."""
    return f"tb_coord_{check_name(tenant, what='tenant')}"


def state_bucket(tenant: str) -> str:
    """The KV bucket where coordinators store the correlations they keep out of memory, ``tb_state_<tenant>``."""
    return f"tb_state_{check_name(tenant, what='tenant')}"


def checkpoint(tenant: str) -> str:
    """Ledger checkpoints: ``tb.<tenant>.ledger.checkpoint``."""
    return f"tb.{check_name(tenant, what='tenant')}.ledger.checkpoint"


_CHANNELS = {
    "out": "outbox",
    "in": "inbox",
    "topic": "topic",
    "decision": "decision",
    "effect": "effect",
    "approval": "approval",
    "quarantine": "quarantine",
}
# channel -> (tokens after tb.<tenant>.<channel>, whether the first names an agent or topic, where a partition is)
_SHAPES: dict[str, tuple[tuple[int, ...], bool, int | None]] = {
    "outbox": ((2,), True, 1),  # tb.T.out.<agent>.<p>
    "inbox": ((1,), True, None),  # tb.T.in.<agent>
    "topic": ((1,), True, None),  # tb.T.topic.<name>
    "decision": ((1,), False, 0),  # tb.T.decision.<p>
    "effect": ((3, 2), True, 1),  # tb.T.effect.<agent>.<p>.<key>; records of old versions: tb.T.effect.<agent>.<key>
    "approval": ((1,), False, 0),  # tb.T.approval.<p>
    "quarantine": ((0,), False, None),  # tb.T.quarantine
    "checkpoint": ((0,), False, None),  # tb.T.ledger.checkpoint
}


@dataclass(frozen=True, slots=True)
class Subject:
    """What a stream subject is, read back from its tokens (see :func:`parse`).

    Attributes:
        tenant: the tenant it belongs to.
        channel: ``outbox``, ``inbox``, ``topic``, ``decision``, ``effect``, ``approval``,
            ``quarantine``, ``checkpoint`` (``tb.<T>.ledger.checkpoint``), or ``other``.
        owner: the agent an outbox, inbox or effect subject names, or a topic's name.
        partition: the partition an outbox, decision, effect or approval subject names, if
            its token is one (canonical decimal); None otherwise.
        key: an effect record's key.
        well_formed: the subject has its channel's shape (number of tokens, a partition token).
        depth: how many tokens follow the channel's.
    """

    tenant: str
    channel: str
    owner: str | None = None
    partition: int | None = None
    key: str | None = None
    well_formed: bool = False
    depth: int = 0


def parse(subject: str) -> Subject | None:
    """What ``subject`` is, or None if it is no trustbus subject (``tb.<tenant>.…``).

    The one reader of subject tokens: everything that needs to know what a stored
    message's subject says asks this.
    """
    tokens = subject.split(".")
    if len(tokens) < 3 or tokens[0] != "tb":
        return None
    tenant, word, rest = tokens[1], tokens[2], tokens[3:]
    channel = _CHANNELS.get(word, "other")
    if word == "ledger":
        channel, rest = ("checkpoint", []) if rest == ["checkpoint"] else ("other", rest)
    if channel == "other":
        return Subject(tenant, "other")
    lengths, named, at = _SHAPES[channel]
    owner = rest[0] if named and rest else None
    if channel == "effect" and len(rest) == 2:
        at = None  # an old record: no partition token
    token = rest[at] if at is not None and at < len(rest) else None
    partition = _partition(token) if token is not None else None
    key = rest[-1] if channel == "effect" and len(rest) in lengths else None
    well_formed = len(rest) in lengths and (at is None or partition is not None)
    return Subject(tenant, channel, owner, partition, key, well_formed, len(rest))


def _partition(token: str) -> int | None:
    """The partition a token names: canonical decimal only (``07`` or ``+7`` would be a second name for 7)."""
    return int(token) if token.isascii() and token.isdigit() and str(int(token)) == token else None


def mediated_recipient(tenant: str, subject: str) -> str | None:
    """Who a delivery on ``subject`` is for (an inbox's agent, or ``topic:<name>``); None elsewhere."""
    parsed = parse(subject)
    if parsed is None or parsed.tenant != tenant or not parsed.well_formed or parsed.owner is None:
        return None
    if parsed.channel == "inbox":
        return parsed.owner
    return f"{TOPIC_PREFIX}{parsed.owner}" if parsed.channel == "topic" else None


def judged_at_store(tenant: str, subject: str) -> bool:
    """Whether ``subject`` carries a component's records (decisions, quarantine records, ledger checkpoints).

    These say what a component saw, not what an agent asks for: they are judged by the
    time the server stored them (their key valid then, their ``ts`` not held to the skew
    window), so a component whose clock was stepped never loses what it recorded.
    """
    return is_decision(tenant, subject) or subject in (quarantine(tenant), checkpoint(tenant))


def effect_owner(tenant: str, subject: str) -> str | None:
    """The agent whose effect records ``subject`` holds (``tb.<tenant>.effect.<agent>.<p>.<key>``); None elsewhere."""
    parsed = parse(subject)
    if parsed is None or parsed.tenant != tenant or parsed.channel != "effect" or parsed.depth != 3:
        return None
    return parsed.owner
