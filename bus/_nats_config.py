"""A tenant's NATS account, rendered from its keyring: the server, not the client, enforces mediation.

Pure: grants in, nats-server config text out; the same input gives the same
bytes. Every live key becomes an nkey user of the account named after the
tenant (the key id is the nkey public key, so one seed both signs envelopes
and authenticates), with permissions fixed by its role (:mod:`bus._permissions`);
each agent and each operator is the one user of an account of its own,
``<tenant>:<owner>``, which imports exactly its services from the tenant's account.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trustbus.bus._errors import ConfigError
from trustbus.bus._identity import verify_key
from trustbus.bus._keyring import ADMIN_OWNER, KeyGrant, Role
from trustbus.bus._permissions import (
    OWN_ACCOUNT_ROLES,
    Rule,
    User,
    agent_api_subject,
    keyring_notices,
    services_of,
    user_of,
)
from trustbus.bus._subjects import (
    check_name,
    coordinator_bucket,
    keyring_bucket,
    memory_bucket,
    state_bucket,
    stream_name,
)

SYSTEM_ACCOUNT = "SYS"
_ROLE_ORDER: tuple[Role, ...] = ("admin", "coordinator", "ledger", "operator", "agent")
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
    users = [user_of(tenant, grant) for grant in live if grant.role not in OWN_ACCOUNT_ROLES]
    members: dict[str, list[KeyGrant]] = {}
    for grant in live:
        if grant.role in OWN_ACCOUNT_ROLES:
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
        f"{_INDENT}# KV buckets {keyring_bucket(tenant)}, {memory_bucket(tenant)}, {coordinator_bucket(tenant)}",
        f"{_INDENT}# and {state_bucket(tenant)}).",
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
        for rule in services_of(tenant, grants[0]):
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
    notices = keyring_notices(tenant)
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
        lines += _user_lines(user_of(tenant, grant), depth=depth + 2)
    lines += [f"{pad}{_INDENT}]", f"{pad}{_INDENT}imports = ["]
    for rule in services_of(tenant, grants[0]):
        local = agent_api_subject(rule.subject)
        to = f', to: "{local}"' if local != rule.subject else ""
        lines += [f'{pad}{_INDENT * 2}{{ service: {{ account: "{tenant}", subject: "{rule.subject}" }}{to} }}']
    notices = keyring_notices(tenant).subject
    lines += [f'{pad}{_INDENT * 2}{{ stream: {{ account: "{tenant}", subject: "{notices}" }} }}']
    lines += [f"{pad}{_INDENT}]", f"{pad}}}"]
    return lines


def _user_lines(user: User, *, depth: int) -> list[str]:
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


def _list_lines(key: str, rules: Sequence[Rule], *, depth: int) -> list[str]:
    pad = _INDENT * depth
    width = max(len(rule.subject) for rule in rules) + 2
    quoted = [f'"{rule.subject}"' for rule in rules]
    items = [f"{pad}{_INDENT}{subject:<{width}}  # {rule.why}" for subject, rule in zip(quoted, rules, strict=True)]
    return [f"{pad}{key}: [", *items, f"{pad}]"]
