"""A tenant's NATS account, rendered from its keyring: the server, not the client, enforces mediation.

Pure: grants in, nats-server config text out; the same input gives the same
bytes. Every live key becomes an nkey user of the account named after the
tenant (the key id is the nkey public key, so one seed both signs envelopes
and authenticates), with permissions fixed by its role:

- ``admin``: everything; the only user who may delete, purge or update a stream.
- ``coordinator``: delivers to inboxes and topics, records decisions and
  approvals, writes agent memory, creates and reads any consumer on the
  tenant stream.
- ``ledger``: reads the stream through its own consumer (which it may also
  delete, to make it anew from its projection's position), publishes checkpoints.
- ``operator``: publishes approvals and to its own outbox; reads single
  messages of the stream and memory. An account of its own (below).
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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trustbus.bus._errors import ConfigError
from trustbus.bus._identity import verify_key
from trustbus.bus._keyring import ADMIN_OWNER, KeyGrant, Role
from trustbus.bus._subjects import (
    GIVEN_UP_CONSUMER,
    all_approvals,
    all_decisions,
    all_inboxes,
    all_topics,
    check_name,
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
    stream_name,
)

SYSTEM_ACCOUNT = "SYS"
AGENT_API_PREFIX = "$TB.API"  # the tenant's JetStream API, as an agent's account imports it
_JS_API = "$JS.API"
_ROLE_ORDER: tuple[Role, ...] = ("admin", "coordinator", "ledger", "operator", "agent")
_OWN_ACCOUNT_ROLES: tuple[Role, ...] = ("operator", "agent")  # each owner its own account, importing its services
_INDENT = "  "

_HEADER = """\
# NATS accounts for trustbus tenant "{tenant}", rendered by `trustbus config render`.
#
# One nkey user per live key in the tenant's keyring (revoked keys have none),
# its permissions fixed by its role. Do not edit: after `trustbus keys new`,
# `keys rotate` or `keys revoke`, render again and reload the server
# (`nats-server --signal reload=<pid>`, or SIGHUP). Check: nats-server -c FILE -t
#
# Permissions are allow lists and a deny always wins. Every user but the admin
# is denied the destructive JetStream API (delete, purge, update a stream,
# delete a message) and subscribes only under its own reply prefix
# _INBOX_<owner> (its client connects with inbox_prefix=b"_INBOX_<owner>") and
# to keyring writes ($KV.{keys}.>, a notice to read the keyring again).
#
# Reply subjects: the server does not check the reply subject of a request
# against the requester's permissions (nats-server has no such option;
# allow_responses is the responder's side), and it publishes its answer there.
# A JetStream API request made in the tenant's account with a tenant subject as
# its reply would have the answer stored by {stream} or a bucket. So the stream
# and buckets stay in the tenant's account, and each agent and each operator
# is the one user of an account of its own, "{tenant}:<owner>", with no
# JetStream. The tenant account exports each service they use (outbox and
# effect subjects with their pub acks, quarantine, approvals, fetch, info and
# acks of an inbox consumer, direct gets of memory keys and effect records,
# message gets of the stream and memory, reads of the keyring) to the
# accounts that use it only, and each imports its own, the JetStream API
# under $TB.API. Every answer to them crosses back into their own account,
# where nothing captures a tenant subject. A render that adds such an
# account is applied by TWO reloads: the server wires the imports of an
# account a reload introduces only at the next one (bus.reload_until_wired).
# The admin, coordinator and ledger stay users of the tenant account
# (docs/THREAT_MODEL.md: what they can still make the server store).
#
# Keyring: read message by message (STREAM.MSG.GET on KV_{keys}), never
# through a consumer: a push consumer's deliver subject is not checked against
# its creator's permissions and would be published in the tenant's account.
"""

_BOOTSTRAP_NOTE = """\
#
# BOOTSTRAP: the account's only user is the tenant admin. Start the server
# with this file, provision the tenant inside its account and issue keys as
# the admin, then render the full config and reload:
#   trustbus --nkey <keys>/{tenant}/admin.seed init --tenant {tenant}
#   trustbus --nkey <keys>/{tenant}/admin.seed keys new --tenant {tenant} --owner <agent>
#   trustbus --nkey <keys>/{tenant}/admin.seed config render --tenant {tenant} --out FILE
#   nats-server --signal reload=<pid>
"""

_SERVER = """\

# One envelope is at most 1 MiB (the tenant stream's max_msg_size matches).
max_payload: 1MB

# JetStream on; the store dir is given on the command line (-sd) or added here.
# Every write is fsynced before it is acked: an acked envelope survives a power
# loss (the default syncs every 2 minutes). See docs/OPERATIONS.md, "Durability".
jetstream {
  sync_interval: always
}

# The system account: server events and monitoring ($SYS.>), no JetStream.
system_account: SYS
"""


@dataclass(frozen=True, slots=True)
class _Rule:
    """One permission subject and why the user needs it."""

    subject: str
    why: str


@dataclass(frozen=True, slots=True)
class _User:
    """One nkey user: who it is and what it may publish and subscribe to."""

    grant: KeyGrant
    summary: str
    publish: tuple[_Rule, ...]
    deny: tuple[_Rule, ...]
    subscribe: tuple[_Rule, ...]


_DENY_DESTRUCTIVE = (
    _Rule("$JS.API.STREAM.DELETE.>", "delete a stream"),
    _Rule("$JS.API.STREAM.PURGE.>", "purge a stream"),
    _Rule("$JS.API.STREAM.UPDATE.>", "reconfigure a stream"),
    _Rule("$JS.API.STREAM.MSG.DELETE.>", "delete a message (the KV streams have no deny_delete)"),
)


def render_tenant_config(
    tenant: str,
    grants: Sequence[KeyGrant],
    *,
    standalone: bool = True,
    system_user_nkey: str | None = None,
) -> str:
    """The nats-server config of ``tenant``'s account: one nkey user per live key.

    Args:
        tenant: the tenant; its account has the same name.
        grants: the tenant's trusted keyring grants (:func:`bus.list_keys`).
            A grant with a ``revoked_at``, even a future one, gets no user.
        standalone: also emit what a server needs around the account (JetStream,
            ``max_payload``, the system account ``SYS``); otherwise only the
            ``accounts { ... }`` block, to merge into an existing config.
        system_user_nkey: the public nkey (``U...``) of a user of the system
            account; without it ``SYS`` has no users.

    Returns:
        The config text; ``nats-server -c FILE -t`` accepts it.

    Raises:
        ConfigError: a grant of another tenant, an invalid key id, a key listed
            twice, a reader owner named like an agent's consumer (``in-...``),
            or a tenant named like the system account.
    """
    return _render(tenant, grants, standalone=standalone, system_user_nkey=system_user_nkey, bootstrap=False)


def render_bootstrap_config(
    tenant: str, admin_key_id: str, *, standalone: bool = True, system_user_nkey: str | None = None
) -> str:
    """The config of ``tenant``'s account whose only user is its admin, to provision the tenant in it.

    A tenant's stream and buckets live in its account's JetStream, so the
    tenant must be provisioned by a user of that account from the start: start
    the server with this, run ``trustbus init`` and ``keys new`` as the admin,
    then render the full config (:func:`render_tenant_config`) and reload.

    Args:
        tenant: the tenant; its account has the same name.
        admin_key_id: the key id of the tenant's admin seed (the one ``init`` pins).
        standalone: as for :func:`render_tenant_config`.
        system_user_nkey: as for :func:`render_tenant_config`.
    """
    admin = KeyGrant(tenant=tenant, key_id=admin_key_id, owner=ADMIN_OWNER, role="admin", valid_from=0)
    return _render(tenant, [admin], standalone=standalone, system_user_nkey=system_user_nkey, bootstrap=True)


def _render(
    tenant: str,
    grants: Sequence[KeyGrant],
    *,
    standalone: bool,
    system_user_nkey: str | None,
    bootstrap: bool,
) -> str:
    check_name(tenant, what="tenant")
    if standalone and tenant == SYSTEM_ACCOUNT:
        raise ConfigError(f"tenant {tenant!r} has the system account's name: render with accounts only")
    if system_user_nkey is not None:
        verify_key(system_user_nkey)
    live = _live(tenant, grants)
    users = [_user(tenant, grant) for grant in live if grant.role not in _OWN_ACCOUNT_ROLES]
    members: dict[str, list[KeyGrant]] = {}
    for grant in live:
        if grant.role in _OWN_ACCOUNT_ROLES:
            owned = members.setdefault(grant.owner, [])
            if owned and owned[0].role != grant.role:
                raise ConfigError(f"owner {grant.owner!r} has live keys of two roles: {owned[0].role}, {grant.role}")
            owned.append(grant)
    lines = _HEADER.format(tenant=tenant, keys=keyring_bucket(tenant), stream=stream_name(tenant)).splitlines()
    if bootstrap:
        lines += _BOOTSTRAP_NOTE.format(tenant=tenant).splitlines()
    if standalone:
        lines += _SERVER.splitlines()
    lines += ["", "accounts {"]
    if standalone:
        lines += [f"{_INDENT}{SYSTEM_ACCOUNT} {{"]
        if system_user_nkey is None:
            lines += [f"{_INDENT * 2}# no users: render with a system user nkey to monitor the server"]
        else:
            lines += [f"{_INDENT * 2}users = [", f"{_INDENT * 3}{{ nkey: {system_user_nkey} }}", f"{_INDENT * 2}]"]
        lines += [f"{_INDENT}}}", ""]
    lines += [
        f"{_INDENT}# Tenant {tenant}: its own subject space and JetStream (stream {stream_name(tenant)},",
        f"{_INDENT}# KV buckets {keyring_bucket(tenant)}, {memory_bucket(tenant)} and {coordinator_bucket(tenant)}).",
        f'{_INDENT}"{tenant}" {{',
        f"{_INDENT * 2}jetstream: enabled",
        f"{_INDENT * 2}users = [",
    ]
    for user in users:
        lines += _user_lines(user, depth=3)
    lines += [f"{_INDENT * 2}]"]
    lines += _export_lines(tenant, dict(sorted(members.items())), depth=2)
    lines += [f"{_INDENT}}}"]
    for owner, owned in sorted(members.items()):
        lines += _own_account_lines(tenant, owner, owned, depth=1)
    lines += ["}", ""]
    return "\n".join(lines)


def own_account(tenant: str, owner: str) -> str:
    """The account of ``tenant``'s agent or operator ``owner``: ``<tenant>:<owner>`` (no name has a ``:``)."""
    return f"{check_name(tenant, what='tenant')}:{check_name(owner, what='owner')}"


def _live(tenant: str, grants: Iterable[KeyGrant]) -> list[KeyGrant]:
    """The unrevoked grants, checked, in a fixed order (role, owner, key id)."""
    seen: set[str] = set()
    live: list[KeyGrant] = []
    for grant in grants:
        if grant.tenant != tenant:
            raise ConfigError(f"key {grant.key_id} belongs to tenant {grant.tenant!r}, not {tenant!r}")
        if grant.key_id in seen:
            raise ConfigError(f"key {grant.key_id} is listed twice")
        seen.add(grant.key_id)
        verify_key(grant.key_id)
        check_name(grant.owner, what="owner")
        if grant.revoked_at is None:
            live.append(grant)
    return sorted(live, key=lambda g: (_ROLE_ORDER.index(g.role), g.owner, g.key_id))


def _user(tenant: str, grant: KeyGrant) -> _User:
    owner = grant.owner
    if grant.role == "admin":
        return _User(
            grant=grant,
            summary=f"{owner} (admin): everything, including deleting, purging and updating streams",
            publish=(_Rule(">", "every subject, the whole JetStream API included"),),
            deny=(),
            subscribe=(_Rule(">", "every subject"),),
        )
    if grant.role in _OWN_ACCOUNT_ROLES:
        summary = (
            f"{owner} (agent): its own outbox and effect records; its inbox consumer and memory keys"
            if grant.role == "agent"
            else f"{owner} (operator): approvals, rollbacks through the coordinator, reads the stream and memory"
        )
        return _User(
            grant=grant,
            summary=summary,
            publish=(
                *(_Rule(agent_api_subject(rule.subject), rule.why) for rule in _services(tenant, grant)),
                _Rule(
                    f"{_JS_API}.STREAM.INFO.{stream_name(tenant)}",
                    "answered by the server in its own account, 'JetStream not enabled': how a client finds "
                    f"the tenant's API under {AGENT_API_PREFIX}",
                ),
            ),
            deny=_DENY_DESTRUCTIVE,
            subscribe=(
                _Rule(f"{reply_prefix(owner)}.>", "replies to its own requests only"),
                _keyring_notices(tenant),
            ),
        )
    if grant.role == "coordinator":
        summary = f"{owner} (coordinator): the mediator; trusted with every consumer, may not touch a stream"
        publish = _coordinator(tenant)
    else:
        summary = f"{owner} (ledger): reads the stream through its consumer {owner!r}, publishes checkpoints"
        publish = (
            _Rule(checkpoint(tenant), "signed ledger checkpoints"),
            _Rule(quarantine(tenant), "quarantine records for what fails verification or is given up"),
            *_reader(tenant, owner, may_delete=True),
            *_own_consumer(given_up_stream(tenant), GIVEN_UP_CONSUMER),
        )
    return _User(
        grant=grant,
        summary=summary,
        publish=(*publish, *_keyring_reads(tenant)),
        deny=_DENY_DESTRUCTIVE,
        subscribe=(_Rule(f"{reply_prefix(owner)}.>", "replies to its own requests only"), _keyring_notices(tenant)),
    )


def _services(tenant: str, grant: KeyGrant) -> tuple[_Rule, ...]:
    """What an agent or operator imports from the tenant's account."""
    return _agent_services(tenant, grant.owner) if grant.role == "agent" else _operator_services(tenant, grant.owner)


def _operator_services(tenant: str, operator: str) -> tuple[_Rule, ...]:
    """What an operator may send: approvals, its own outbox, and reads of the stream, memory and keyring.

    No consumer: it reads the decision log and the stream message by message.
    """
    return (
        _Rule(all_approvals(tenant), "signed approvals (one subject per partition)"),
        _Rule(own_outboxes(tenant, operator), "its own outbox: a rollback's compensations and memory reverts"),
        _Rule(f"$JS.API.STREAM.MSG.GET.{stream_name(tenant)}", "read single messages: the decision log"),
        _Rule(f"$JS.API.STREAM.MSG.GET.KV_{memory_bucket(tenant)}", "read agent memory (what a rollback reverts)"),
        *_keyring_reads(tenant),
    )


def _agent_services(tenant: str, agent: str) -> tuple[_Rule, ...]:
    """What an agent may send, each a service its account imports from the tenant's.

    Named as in the tenant's account; its account imports the JetStream API
    ones under :data:`AGENT_API_PREFIX` (:func:`agent_api_subject`).
    """
    stream = stream_name(tenant)
    consumer = inbox_consumer(agent)
    memory = memory_bucket(tenant)
    return (
        _Rule(own_outboxes(tenant, agent), "its own outbox (per partition): the only way to reach anyone"),
        _Rule(f"{effect(tenant, agent)}.>", "its runtime's effect records, one subject per idempotency key"),
        _Rule(quarantine(tenant), "quarantine records for what fails verification"),
        _Rule(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            "fetch from its inbox consumer, made by the coordinator",
        ),
        _Rule(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", "that consumer's max_deliver and ack floor"),
        _Rule(f"$JS.ACK.{stream}.{consumer}.>", "ack, nak, term or extend its deliveries"),
        _Rule(
            f"$JS.API.DIRECT.GET.KV_{memory}.$KV.{memory}.{agent}.>",
            f"read its own memory keys, {agent}.<key> (a direct get names the key in its subject)",
        ),
        _Rule(
            f"$JS.API.DIRECT.GET.{stream}.{effect(tenant, agent)}.>",
            "read back its own effect records (has this call completed?), by direct get",
        ),
        *_keyring_reads(tenant),
    )


def _export_lines(tenant: str, members: dict[str, list[KeyGrant]], *, depth: int) -> list[str]:
    """The tenant account's exports: each service of an agent or operator, to the accounts that import it only.

    A subject only one owner uses (its outbox, its inbox consumer, its memory
    keys) goes to that owner's account alone; a shared one (quarantine, the
    keyring reads) to every account that imports it.
    """
    if not members:
        return []
    services: dict[str, list[str]] = {}
    for owner, grants in members.items():
        for rule in _services(tenant, grants[0]):
            services.setdefault(rule.subject, []).append(own_account(tenant, owner))
    pad = _INDENT * depth
    lines = [
        f"{pad}# What the accounts {tenant}:<owner> of agents and operators import, each service to the",
        f"{pad}# accounts that use it only (header: Reply subjects).",
        f"{pad}exports = [",
    ]
    for subject, accounts in services.items():
        kind = ", response_type: stream" if ".CONSUMER.MSG.NEXT." in subject else ""  # fetched messages
        lines += [f'{pad}{_INDENT}{{ service: "{subject}"{kind}, accounts: {_quoted(accounts)} }}']
    notices = _keyring_notices(tenant)
    everyone = _quoted([own_account(tenant, owner) for owner in members])
    lines += [f'{pad}{_INDENT}{{ stream: "{notices.subject}", accounts: {everyone} }}  # {notices.why}', f"{pad}]"]
    return lines


def _quoted(names: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def _own_account_lines(tenant: str, owner: str, grants: Sequence[KeyGrant], *, depth: int) -> list[str]:
    """The account of one agent or operator: its users (its live keys), and what it imports from the tenant's."""
    pad = _INDENT * depth
    role = grants[0].role
    lines = [
        "",
        f"{pad}# {role.capitalize()} {owner} of tenant {tenant}: no JetStream of its own; it reaches the tenant's",
        f"{pad}# stream and buckets only through what it imports.",
        f'{pad}"{own_account(tenant, owner)}" {{',
        f"{pad}{_INDENT}users = [",
    ]
    for grant in grants:
        lines += _user_lines(_user(tenant, grant), depth=depth + 2)
    lines += [f"{pad}{_INDENT}]", f"{pad}{_INDENT}imports = ["]
    for rule in _services(tenant, grants[0]):
        local = agent_api_subject(rule.subject)
        to = f', to: "{local}"' if local != rule.subject else ""
        lines += [f'{pad}{_INDENT * 2}{{ service: {{ account: "{tenant}", subject: "{rule.subject}" }}{to} }}']
    notices = _keyring_notices(tenant).subject
    lines += [f'{pad}{_INDENT * 2}{{ stream: {{ account: "{tenant}", subject: "{notices}" }} }}']
    lines += [f"{pad}{_INDENT}]", f"{pad}}}"]
    return lines


def agent_api_subject(subject: str) -> str:
    """Where an agent's account imports a tenant subject: the JetStream API under :data:`AGENT_API_PREFIX`.

    An account without JetStream answers ``$JS.API.>`` itself ("JetStream not
    enabled for account"), ahead of any import under that name.
    """
    api = f"{_JS_API}."
    return f"{AGENT_API_PREFIX}.{subject[len(api) :]}" if subject.startswith(api) else subject


def _coordinator(tenant: str) -> tuple[_Rule, ...]:
    stream = stream_name(tenant)
    memory = f"KV_{memory_bucket(tenant)}"
    return (
        _Rule(all_inboxes(tenant), "deliver mediated envelopes to the agents' inboxes"),
        _Rule(all_topics(tenant), "deliver to topics"),
        _Rule(all_decisions(tenant), "record its decisions (one log per partition)"),
        _Rule(all_approvals(tenant), "approval requests and outcomes"),
        _Rule(quarantine(tenant), "quarantine records for what fails verification"),
        _Rule(f"$JS.API.STREAM.MSG.GET.{stream}", "read single messages of the stream"),
        _Rule(f"$JS.API.CONSUMER.CREATE.{stream}.>", "named consumers: its partitions', and its readers of the stream"),
        _Rule(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*", "durable consumers, the agents' in-<agent> among them"),
        _Rule(f"$JS.API.CONSUMER.INFO.{stream}.*", "consumer state"),
        _Rule(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*", "fetch from its pull consumers"),
        _Rule(f"$JS.ACK.{stream}.>", "ack what it handled"),
        _Rule(f"$KV.{memory_bucket(tenant)}.>", "write agent memory (after an accepted memory_write)"),
        _Rule(f"$JS.API.STREAM.INFO.{memory}", "open the memory bucket"),
        _Rule(f"$JS.API.STREAM.MSG.GET.{memory}", "read memory"),
        _Rule(f"$JS.API.DIRECT.GET.{memory}.>", "read memory (direct get)"),
        _Rule(f"$KV.{coordinator_bucket(tenant)}.>", "lease partitions (compare-and-set on their keys)"),
        _Rule(f"$JS.API.STREAM.INFO.KV_{coordinator_bucket(tenant)}", "open the lease bucket"),
        _Rule(f"$JS.API.STREAM.MSG.GET.KV_{coordinator_bucket(tenant)}", "read the leases"),
    )


def _reader(tenant: str, consumer: str, *, may_delete: bool) -> tuple[_Rule, ...]:
    """A ledger's or operator's rights on the stream: single messages, and its own consumer named after it.

    ``may_delete``: it may also delete that consumer (the ledger service makes it
    anew from its projection's position when the two disagree: docs/LEDGER_PROJECTION.md).
    """
    if consumer.startswith("in-"):
        raise ConfigError(f"owner {consumer!r} could take over an agent's inbox consumer: give it another name")
    stream = stream_name(tenant)
    delete = _Rule(
        f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", "delete its own consumer, to make it anew from a sequence"
    )
    return (
        _Rule(f"$JS.API.STREAM.MSG.GET.{stream}", "read single messages of the stream"),
        *((delete,) if may_delete else ()),
        *_own_consumer(stream, consumer),
    )


def _own_consumer(stream: str, consumer: str) -> tuple[_Rule, ...]:
    """Create, read and ack the consumer of ``stream`` named ``consumer``."""
    return (
        _Rule(f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}", f"create its own consumer of {stream}, by name only"),
        _Rule(f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>", "... with a filter subject"),
        _Rule(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}", "... or as a durable"),
        _Rule(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", "its consumer's state"),
        _Rule(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", "fetch from it"),
        _Rule(f"$JS.ACK.{stream}.{consumer}.>", "ack what it read"),
    )


def _keyring_reads(tenant: str) -> tuple[_Rule, ...]:
    """What :class:`bus.KeyringStore` (and so ``Bus.connect``) needs to load the keyring, read-only, no consumer."""
    return (
        _Rule(f"$JS.API.STREAM.INFO.{stream_name(tenant)}", "the admin key pinned in the stream: the trust anchor"),
        _Rule(f"$JS.API.STREAM.MSG.GET.KV_{keyring_bucket(tenant)}", "read the keyring, message by message"),
    )


def _keyring_notices(tenant: str) -> _Rule:
    """Where keyring writes are heard: a notice to read the keyring again (revocations take effect at once)."""
    return _Rule(f"$KV.{keyring_bucket(tenant)}.>", "keyring writes: a notice to read the keyring again")


def _user_lines(user: _User, *, depth: int) -> list[str]:
    pad = _INDENT * depth
    lines = [f"{pad}# {user.summary}", f"{pad}{{", f"{pad}{_INDENT}nkey: {user.grant.key_id}"]
    lines += [f"{pad}{_INDENT}permissions: {{", f"{pad}{_INDENT * 2}publish: {{"]
    lines += _list_lines("allow", user.publish, depth=depth + 3)
    if user.deny:
        lines += _list_lines("deny", user.deny, depth=depth + 3)
    lines += [f"{pad}{_INDENT * 2}}}", f"{pad}{_INDENT * 2}subscribe: {{"]
    lines += _list_lines("allow", user.subscribe, depth=depth + 3)
    lines += [f"{pad}{_INDENT * 2}}}", f"{pad}{_INDENT}}}", f"{pad}}}"]
    return lines


def _list_lines(key: str, rules: Sequence[_Rule], *, depth: int) -> list[str]:
    pad = _INDENT * depth
    width = max(len(rule.subject) for rule in rules) + 2
    quoted = [f'"{rule.subject}"' for rule in rules]
    items = [f"{pad}{_INDENT}{subject:<{width}}  # {rule.why}" for subject, rule in zip(quoted, rules, strict=True)]
    return [f"{pad}{key}: [", *items, f"{pad}]"]
