"""What each role of a tenant's keyring may do on the server: the permission rules of its nkey users.

Pure: a grant in, allow and deny lists out, each subject with why it is
needed (:mod:`bus._nats_config` renders them). By role:

- ``admin``: everything; the only user who may delete, purge or update a stream.
- ``coordinator``: delivers to inboxes and topics, records decisions and
  approvals, writes agent memory, creates and reads any consumer on the
  tenant stream.
- ``ledger``: reads the stream through its own consumer (which it may also
  delete, to make it anew from its projection's position), publishes checkpoints.
- ``operator``: publishes approvals and to its own outbox; reads single
  messages of the stream and memory. An account of its own, importing these
  services from the tenant's account.
- ``agent``: publishes to its own outbox and effect subjects (and quarantine)
  only; reads its own inbox consumer, its own memory keys and its own effect
  records. An account of its own, ``<tenant>:<agent>``, which imports exactly
  these services from the tenant's account: the server's answers to it (and to
  an operator) are delivered there, whatever reply subject it names.

Every user may read the keyring the way :class:`bus.KeyringStore` does, and
every user but the admin is denied the destructive JetStream API calls and
may subscribe only under its own reply prefix (:func:`bus.subjects.reply_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustbus.bus._errors import ConfigError
from trustbus.bus._keyring import KeyGrant, Role
from trustbus.bus._subjects import (
    GIVEN_UP_CONSUMER,
    all_approvals,
    all_decisions,
    all_inboxes,
    all_topics,
    checkpoint,
    coordinator_bucket,
    effect,
    given_up_stream,
    inbox_consumer,
    keyring_bucket,
    memory_bucket,
    own_outboxes,
    quarantine,
    reply_prefix,
    state_bucket,
    stream_name,
)

AGENT_API_PREFIX = "$TB.API"  # the tenant's JetStream API, as an agent's account imports it
_JS_API = "$JS.API"
OWN_ACCOUNT_ROLES: tuple[Role, ...] = ("operator", "agent")  # each owner its own account, importing its services


@dataclass(frozen=True, slots=True)
class Rule:
    """One permission subject and why the user needs it."""

    subject: str
    why: str


@dataclass(frozen=True, slots=True)
class User:
    """One nkey user: who it is and what it may publish and subscribe to."""

    grant: KeyGrant
    summary: str
    publish: tuple[Rule, ...]
    deny: tuple[Rule, ...]
    subscribe: tuple[Rule, ...]


_DENY_DESTRUCTIVE = (
    Rule("$JS.API.STREAM.DELETE.>", "delete a stream"),
    Rule("$JS.API.STREAM.PURGE.>", "purge a stream"),
    Rule("$JS.API.STREAM.UPDATE.>", "reconfigure a stream"),
    Rule("$JS.API.STREAM.MSG.DELETE.>", "delete a message (the KV streams have no deny_delete)"),
)


def user_of(tenant: str, grant: KeyGrant) -> User:
    """The nkey user of ``grant``: its permissions fixed by its role."""
    owner = grant.owner
    if grant.role == "admin":
        return User(
            grant=grant,
            summary=f"{owner} (admin): everything, including deleting, purging and updating streams",
            publish=(Rule(">", "every subject, the whole JetStream API included"),),
            deny=(),
            subscribe=(Rule(">", "every subject"),),
        )
    if grant.role in OWN_ACCOUNT_ROLES:
        summary = (
            f"{owner} (agent): its own outbox and effect records; its inbox consumer and memory keys"
            if grant.role == "agent"
            else f"{owner} (operator): approvals, rollbacks through the coordinator, reads the stream and memory"
        )
        return User(
            grant=grant,
            summary=summary,
            publish=(
                *(Rule(agent_api_subject(rule.subject), rule.why) for rule in services_of(tenant, grant)),
                Rule(
                    f"{_JS_API}.STREAM.INFO.{stream_name(tenant)}",
                    "answered by the server in its own account, 'JetStream not enabled': how a client finds "
                    f"the tenant's API under {AGENT_API_PREFIX}",
                ),
            ),
            deny=_DENY_DESTRUCTIVE,
            subscribe=(
                Rule(f"{reply_prefix(owner)}.>", "replies to its own requests only"),
                keyring_notices(tenant),
            ),
        )
    if grant.role == "coordinator":
        summary = f"{owner} (coordinator): the mediator; trusted with every consumer, may not touch a stream"
        publish = _coordinator(tenant)
    else:
        summary = f"{owner} (ledger): reads the stream through its consumer {owner!r}, publishes checkpoints"
        publish = (
            Rule(checkpoint(tenant), "signed ledger checkpoints"),
            Rule(quarantine(tenant), "quarantine records for what fails verification or is given up"),
            *_reader(tenant, owner, may_delete=True),
            *_own_consumer(given_up_stream(tenant), GIVEN_UP_CONSUMER),
        )
    return User(
        grant=grant,
        summary=summary,
        publish=(*publish, *_keyring_reads(tenant)),
        deny=_DENY_DESTRUCTIVE,
        subscribe=(Rule(f"{reply_prefix(owner)}.>", "replies to its own requests only"), keyring_notices(tenant)),
    )


def services_of(tenant: str, grant: KeyGrant) -> tuple[Rule, ...]:
    """What an agent or operator imports from the tenant's account."""
    return _agent_services(tenant, grant.owner) if grant.role == "agent" else _operator_services(tenant, grant.owner)


def _operator_services(tenant: str, operator: str) -> tuple[Rule, ...]:
    """What an operator may send: approvals, its own outbox, and reads of the stream, memory and keyring.

    No consumer: it reads the decision log and the stream message by message.
    """
    return (
        Rule(all_approvals(tenant), "signed approvals (one subject per partition)"),
        Rule(own_outboxes(tenant, operator), "its own outbox: a rollback's compensations and memory reverts"),
        Rule(f"$JS.API.STREAM.MSG.GET.{stream_name(tenant)}", "read single messages: the decision log"),
        Rule(f"$JS.API.STREAM.MSG.GET.KV_{memory_bucket(tenant)}", "read agent memory (what a rollback reverts)"),
        *_keyring_reads(tenant),
    )


def _agent_services(tenant: str, agent: str) -> tuple[Rule, ...]:
    """What an agent may send, each a service its account imports from the tenant's.

    Named as in the tenant's account; its account imports the JetStream API
    ones under :data:`AGENT_API_PREFIX` (:func:`agent_api_subject`).
    """
    stream = stream_name(tenant)
    consumer = inbox_consumer(agent)
    memory = memory_bucket(tenant)
    return (
        Rule(own_outboxes(tenant, agent), "its own outbox (per partition): the only way to reach anyone"),
        Rule(f"{effect(tenant, agent)}.>", "its runtime's effect records, one subject per idempotency key"),
        Rule(quarantine(tenant), "quarantine records for what fails verification"),
        Rule(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            "fetch from its inbox consumer, made by the coordinator",
        ),
        Rule(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", "that consumer's max_deliver and ack floor"),
        Rule(f"$JS.ACK.{stream}.{consumer}.>", "ack, nak, term or extend its deliveries"),
        Rule(
            f"$JS.API.DIRECT.GET.KV_{memory}.$KV.{memory}.{agent}.>",
            f"read its own memory keys, {agent}.<key> (a direct get names the key in its subject)",
        ),
        Rule(
            f"$JS.API.DIRECT.GET.{stream}.{effect(tenant, agent)}.>",
            "read back its own effect records (has this call completed?), by direct get",
        ),
        *_keyring_reads(tenant),
    )


def agent_api_subject(subject: str) -> str:
    """Where an agent's account imports a tenant subject: the JetStream API under :data:`AGENT_API_PREFIX`.

    An account without JetStream answers ``$JS.API.>`` itself ("JetStream not
    enabled for account"), ahead of any import under that name.
    """
    api = f"{_JS_API}."
    return f"{AGENT_API_PREFIX}.{subject[len(api) :]}" if subject.startswith(api) else subject


def _coordinator(tenant: str) -> tuple[Rule, ...]:
    stream = stream_name(tenant)
    memory = f"KV_{memory_bucket(tenant)}"
    return (
        Rule(all_inboxes(tenant), "deliver mediated envelopes to the agents' inboxes"),
        Rule(all_topics(tenant), "deliver to topics"),
        Rule(all_decisions(tenant), "record its decisions (one log per partition)"),
        Rule(all_approvals(tenant), "approval requests and outcomes"),
        Rule(quarantine(tenant), "quarantine records for what fails verification"),
        Rule(f"$JS.API.STREAM.MSG.GET.{stream}", "read single messages of the stream"),
        Rule(f"$JS.API.CONSUMER.CREATE.{stream}.>", "named consumers: its partitions', and its readers of the stream"),
        Rule(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*", "durable consumers, the agents' in-<agent> among them"),
        Rule(f"$JS.API.CONSUMER.INFO.{stream}.*", "consumer state"),
        Rule(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*", "fetch from its pull consumers"),
        Rule(f"$JS.ACK.{stream}.>", "ack what it handled"),
        Rule(f"$KV.{memory_bucket(tenant)}.>", "write agent memory (after an accepted memory_write)"),
        Rule(f"$JS.API.STREAM.INFO.{memory}", "open the memory bucket"),
        Rule(f"$JS.API.STREAM.MSG.GET.{memory}", "read memory"),
        Rule(f"$JS.API.DIRECT.GET.{memory}.>", "read memory (direct get)"),
        Rule(f"$KV.{coordinator_bucket(tenant)}.>", "lease partitions (compare-and-set on their keys)"),
        Rule(f"$JS.API.STREAM.INFO.KV_{coordinator_bucket(tenant)}", "open the lease bucket"),
        Rule(f"$JS.API.STREAM.MSG.GET.KV_{coordinator_bucket(tenant)}", "read the leases"),
        Rule(f"$KV.{state_bucket(tenant)}.>", "store correlations kept out of memory, and snapshots"),
        Rule(f"$JS.API.STREAM.INFO.KV_{state_bucket(tenant)}", "open the state bucket"),
        Rule(f"$JS.API.STREAM.MSG.GET.KV_{state_bucket(tenant)}", "load a stored correlation or snapshot"),
        Rule(f"$JS.API.DIRECT.GET.KV_{state_bucket(tenant)}", "load a batch's stored correlations in one request"),
    )


def _reader(tenant: str, consumer: str, *, may_delete: bool) -> tuple[Rule, ...]:
    """A ledger's or operator's rights on the stream: single messages, and its own consumer named after it.

    ``may_delete``: it may also delete that consumer (the ledger service makes it
    anew from its projection's position when the two disagree: docs/LEDGER_PROJECTION.md).
    """
    if consumer.startswith("in-"):
        raise ConfigError(f"owner {consumer!r} could take over an agent's inbox consumer: give it another name")
    stream = stream_name(tenant)
    delete = Rule(
        f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", "delete its own consumer, to make it anew from a sequence"
    )
    return (
        Rule(f"$JS.API.STREAM.MSG.GET.{stream}", "read single messages of the stream"),
        *((delete,) if may_delete else ()),
        *_own_consumer(stream, consumer),
    )


def _own_consumer(stream: str, consumer: str) -> tuple[Rule, ...]:
    """Create, read and ack the consumer of ``stream`` named ``consumer``."""
    return (
        Rule(f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}", f"create its own consumer of {stream}, by name only"),
        Rule(f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>", "... with a filter subject"),
        Rule(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}", "... or as a durable"),
        Rule(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", "its consumer's state"),
        Rule(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", "fetch from it"),
        Rule(f"$JS.ACK.{stream}.{consumer}.>", "ack what it read"),
    )


def _keyring_reads(tenant: str) -> tuple[Rule, ...]:
    """What :class:`bus.KeyringStore` (and so ``Bus.connect``) needs to load the keyring, read-only, no consumer."""
    return (
        Rule(f"$JS.API.STREAM.INFO.{stream_name(tenant)}", "the admin key pinned in the stream: the trust anchor"),
        Rule(f"$JS.API.STREAM.MSG.GET.KV_{keyring_bucket(tenant)}", "read the keyring, message by message"),
    )


def keyring_notices(tenant: str) -> Rule:
    """Where keyring writes are heard: a notice to read the keyring again (revocations take effect at once)."""
    return Rule(f"$KV.{keyring_bucket(tenant)}.>", "keyring writes: a notice to read the keyring again")
