"""The pure renderer of a tenant's NATS account: exact permissions, determinism, revocation, refusals.

The server-side checks (nats-server -t, and every permission on a real server)
are in tests/integration/test_mediation_enforced.py.
"""

from __future__ import annotations

import random
import re

import pytest

from trustbus.bus import ConfigError, Identity, KeyGrant, Role, render_bootstrap_config, render_tenant_config

T = "acme"
DENY_DESTRUCTIVE = [
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
]
KEYRING_READS = ["$JS.API.STREAM.INFO.TB_acme", "$JS.API.STREAM.MSG.GET.KV_tb_keys_acme"]
KEYRING_NOTICES = "$KV.tb_keys_acme.>"


def grant(owner: str, role: Role, *, revoked_at: int | None = None, tenant: str = T) -> KeyGrant:
    return KeyGrant(
        tenant=tenant, key_id=Identity.generate().key_id, owner=owner, role=role, valid_from=1, revoked_at=revoked_at
    )


@pytest.fixture(scope="module")
def grants() -> list[KeyGrant]:
    return [
        grant("admin", "admin"),
        grant("coordinator", "coordinator"),
        grant("ledger", "ledger"),
        grant("ops", "operator"),
        grant("alice", "agent"),
        grant("bob", "agent"),
        grant("alice", "agent", revoked_at=5),  # alice's key before a rotation
    ]


def permissions(config: str, key_id: str) -> dict[str, list[str]]:
    """The publish allow, publish deny and subscribe allow lists of the user with nkey ``key_id``."""
    block = config.split(f"nkey: {key_id}\n", 1)[1].split("nkey: ", 1)[0]
    lists = re.findall(r"(allow|deny): \[\n(.*?)\n\s*\]", block, re.S)
    subjects = [re.findall(r'^\s*"([^"]+)"', body, re.M) for _, body in lists]
    names = ["publish", "deny", "subscribe"] if len(lists) == 3 else ["publish", "subscribe"]
    assert [kind for kind, _ in lists] == (["allow", "deny", "allow"] if len(lists) == 3 else ["allow", "allow"])
    return dict(zip(names, subjects, strict=True))


def test_agent_gets_exactly_its_own_subjects(grants: list[KeyGrant]) -> None:
    """In its own account an agent publishes to its imports only (the JetStream API under $TB.API)."""
    alice = grants[4]
    assert permissions(render_tenant_config(T, grants), alice.key_id) == {
        "publish": [
            "tb.acme.out.alice.*",
            "tb.acme.effect.alice.>",
            "tb.acme.quarantine",
            "$TB.API.CONSUMER.MSG.NEXT.TB_acme.in-alice",
            "$TB.API.CONSUMER.INFO.TB_acme.in-alice",
            "$JS.ACK.TB_acme.in-alice.>",
            "$TB.API.DIRECT.GET.KV_tb_mem_acme.$KV.tb_mem_acme.alice.>",
            "$TB.API.DIRECT.GET.TB_acme.tb.acme.effect.alice.>",
            "$TB.API.STREAM.INFO.TB_acme",
            "$TB.API.STREAM.MSG.GET.KV_tb_keys_acme",
            "$JS.API.STREAM.INFO.TB_acme",
        ],
        "deny": DENY_DESTRUCTIVE,
        "subscribe": ["_INBOX_alice.>", KEYRING_NOTICES],
    }


def account_block(config: str, name: str) -> str:
    """The text of account ``name`` (up to the next account at the same depth)."""
    return config.split(f'\n  "{name}" {{\n', 1)[1].split("\n  }\n", 1)[0]


def test_each_agent_is_the_one_user_of_its_own_account_importing_only_its_services(grants: list[KeyGrant]) -> None:
    """Agents are not users of the tenant account; each account imports its own part of the tenant's exports."""
    config = render_tenant_config(T, grants)
    tenant = account_block(config, T)
    assert grants[4].key_id not in tenant and grants[5].key_id not in tenant
    assert grants[1].key_id in tenant and grants[2].key_id in tenant and grants[3].key_id not in tenant
    alice = account_block(config, "acme:alice")
    assert alice.count("nkey: ") == 1 and grants[4].key_id in alice and "jetstream" not in alice
    imports = re.findall(
        r'\{ (service|stream): \{ account: "acme", subject: "([^"]+)" \}(?:, to: "([^"]+)")? \}', alice
    )
    assert ("service", "tb.acme.out.alice.*", "") in imports
    assert (
        "service",
        "$JS.API.CONSUMER.MSG.NEXT.TB_acme.in-alice",
        "$TB.API.CONSUMER.MSG.NEXT.TB_acme.in-alice",
    ) in imports
    assert ("stream", KEYRING_NOTICES, "") in imports
    assert not [subject for _, subject, _ in imports if "bob" in subject]
    exported = dict(re.findall(r'\{ (?:service|stream): "([^"]+)"[^}]*accounts: \[([^\]]*)\] \}', tenant))
    # Every import is exported under its own name, to alice's account; hers alone unless others use it too.
    shared = {"tb.acme.quarantine", "$JS.API.STREAM.INFO.TB_acme", "$JS.API.STREAM.MSG.GET.KV_tb_keys_acme"}
    for _, subject, _ in imports:
        accounts = exported[subject]
        assert '"acme:alice"' in accounts, subject
        assert subject in shared or subject == KEYRING_NOTICES or accounts == '"acme:alice"', (subject, accounts)
    assert "exports" not in account_block(render_bootstrap_config(T, grants[0].key_id), T)


def test_coordinator_mediates_but_cannot_touch_a_stream_or_an_outbox(grants: list[KeyGrant]) -> None:
    perms = permissions(render_tenant_config(T, grants), grants[1].key_id)
    assert perms["deny"] == DENY_DESTRUCTIVE
    assert perms["subscribe"] == ["_INBOX_coordinator.>", KEYRING_NOTICES]
    rights = {"tb.acme.in.*", "tb.acme.topic.*", "tb.acme.decision.*", "$KV.tb_mem_acme.>", "$KV.tb_coord_acme.>"}
    assert rights | {"$KV.tb_state_acme.>"} <= set(perms["publish"])
    assert not [s for s in perms["publish"] if s.startswith(("tb.acme.out.", "tb.acme.effect.", "$JS.API.STREAM.D"))]


def test_the_ledger_gets_only_its_own_named_consumer(grants: list[KeyGrant]) -> None:
    perms = permissions(render_tenant_config(T, grants), grants[2].key_id)
    consumers = [s for s in perms["publish"] if (".CONSUMER." in s or "$JS.ACK." in s) and "KV_" not in s]
    # Only the ledger may delete its consumer (to make it anew from its projection's position).
    own_consumer = [
        "$JS.API.CONSUMER.CREATE.{stream}.{name}",
        "$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
        "$JS.API.CONSUMER.INFO.{stream}.{name}",
        "$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        "$JS.ACK.{stream}.{name}.>",
    ]
    # It also reads the advisories of messages the server gave up, through the one shared consumer.
    given_up = [r.format(stream="TBADV_acme", name="recorder") for r in own_consumer]
    delete = ["$JS.API.CONSUMER.DELETE.TB_acme.ledger"]
    assert consumers == [*delete, *(r.format(stream="TB_acme", name="ledger") for r in own_consumer), *given_up]
    assert not [s for s in perms["publish"] if s.startswith("$JS.API.CONSUMER.CREATE.TB_acme") and s.count(".") < 5]
    assert perms["subscribe"] == ["_INBOX_ledger.>", KEYRING_NOTICES] and perms["deny"] == DENY_DESTRUCTIVE
    assert "tb.acme.ledger.checkpoint" in perms["publish"]


def test_an_operator_is_its_own_account_and_creates_no_consumer(grants: list[KeyGrant]) -> None:
    """An operator reads message by message; in its own account it publishes to its imports only."""
    config = render_tenant_config(T, grants)
    assert permissions(config, grants[3].key_id) == {
        "publish": [
            "tb.acme.approval.*",
            "tb.acme.out.ops.*",
            "$TB.API.STREAM.MSG.GET.TB_acme",
            "$TB.API.STREAM.MSG.GET.KV_tb_mem_acme",
            "$TB.API.STREAM.INFO.TB_acme",
            "$TB.API.STREAM.MSG.GET.KV_tb_keys_acme",
            "$JS.API.STREAM.INFO.TB_acme",
        ],
        "deny": DENY_DESTRUCTIVE,
        "subscribe": ["_INBOX_ops.>", KEYRING_NOTICES],
    }
    assert grants[3].key_id in account_block(config, "acme:ops")
    assert grants[3].key_id not in account_block(config, T)


def test_admin_may_do_everything(grants: list[KeyGrant]) -> None:
    assert permissions(render_tenant_config(T, grants), grants[0].key_id) == {"publish": [">"], "subscribe": [">"]}


def test_same_grants_in_any_order_give_the_same_bytes(grants: list[KeyGrant]) -> None:
    shuffled = list(grants)
    random.Random(7).shuffle(shuffled)
    assert render_tenant_config(T, grants) == render_tenant_config(T, shuffled)
    assert render_tenant_config(T, grants, standalone=False) == render_tenant_config(T, shuffled, standalone=False)


def test_revoked_keys_get_no_user(grants: list[KeyGrant]) -> None:
    config = render_tenant_config(T, grants)
    assert grants[6].key_id not in config
    assert config.count("nkey: ") == 6  # the live keys, and no system user
    future = grant("bob", "agent", revoked_at=2**62)  # revocation scheduled: no user already
    assert future.key_id not in render_tenant_config(T, [*grants, future])


def test_standalone_wraps_the_account_and_accounts_only_does_not(grants: list[KeyGrant]) -> None:
    system_user = Identity.generate().key_id
    full = render_tenant_config(T, grants, system_user_nkey=system_user)
    for line in (
        "max_payload: 1MB",
        "jetstream {",
        "sync_interval: always",
        "system_account: SYS",
        f"{{ nkey: {system_user} }}",
    ):
        assert f"\n{line}" in full or f" {line}" in full, line
    fragment = render_tenant_config(T, grants, standalone=False)
    body = [line for line in fragment.splitlines() if line and not line.startswith("#")]
    assert body[0] == "accounts {" and body[-1] == "}"
    assert "system_account" not in fragment and "SYS {" not in fragment and "max_payload" not in fragment
    assert "sync_interval" not in fragment
    assert '  "acme" {' in fragment and "    jetstream: enabled" in fragment


def test_bootstrap_config_has_only_the_admin() -> None:
    admin = Identity.generate().key_id
    config = render_bootstrap_config(T, admin)
    assert config.count("nkey: ") == 1 and permissions(config, admin) == {"publish": [">"], "subscribe": [">"]}
    assert "BOOTSTRAP" in config and "trustbus --nkey <keys>/acme/admin.seed init --tenant acme" in config


@pytest.mark.parametrize(
    ("grants", "tenant", "problem"),
    [
        ([grant("alice", "agent", tenant="other")], T, "belongs to tenant 'other'"),
        ([grant("in-alice", "ledger")], T, "could take over an agent's inbox consumer"),
        ([grant("x", "agent"), grant("x", "operator")], T, "live keys of two roles"),
        ([grant("admin", "admin", tenant="SYS")], "SYS", "system account"),
        ([KeyGrant(tenant=T, key_id="Unot-a-key", owner="x", role="agent", valid_from=1)], T, "key id"),
        ([KeyGrant(tenant=T, key_id=Identity.generate().key_id, owner="a.b", role="agent", valid_from=1)], T, "owner"),
        ([grant("x", "agent", tenant="a.b")], "a.b", "invalid tenant"),
    ],
)
def test_refuses_what_would_widen_or_break_the_account(grants: list[KeyGrant], tenant: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        render_tenant_config(tenant, grants)


def test_refuses_a_key_listed_twice(grants: list[KeyGrant]) -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        render_tenant_config(T, [*grants, grants[4]])
