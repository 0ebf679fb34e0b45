#!/bin/sh
# Provisioning of the trustbus tenant for docker-compose.yml: the `provision`
# service runs it (docs/DEPLOY.md); it runs as well outside a container.
#
#   provision.sh bootstrap   the admin seed and the bootstrap account (the admin its only
#                            user), before the NATS nodes start; needs no server
#   provision.sh provision   on the running cluster, as the tenant admin: init (R3), a key
#                            for every owner that has none, then the full account
#   provision.sh render      the account again from the keyring (after keys new/rotate/revoke)
#
# After provision and render, reload every node: docker compose kill -s SIGHUP nats-1 nats-2 nats-3
# and, when agents were added (each is an account of its own), once more after the first is applied.
#
# Environment:
#   TRUSTBUS_TENANT    the tenant (demo)
#   TRUSTBUS_KEYS      seed directory: <keys>/<tenant>/<owner>.seed (/keys)
#   TRUSTBUS_ACCOUNTS  where the nodes include accounts from: <accounts>/<tenant>.conf (/tenants)
#   TRUSTBUS_REPLICAS  replicas of the stream and buckets (3)
#   TRUSTBUS_OWNERS    owner:role pairs to issue keys to ("coordinator:coordinator ledger:ledger")
#   NATS_URL           the servers, comma-separated (provision and render)
set -eu

TENANT=${TRUSTBUS_TENANT:-demo}
KEYS=${TRUSTBUS_KEYS:-/keys}
ACCOUNTS=${TRUSTBUS_ACCOUNTS:-/tenants}
REPLICAS=${TRUSTBUS_REPLICAS:-3}
OWNERS=${TRUSTBUS_OWNERS:-coordinator:coordinator ledger:ledger}
ADMIN_SEED="$KEYS/$TENANT/admin.seed"
ACCOUNT="$ACCOUNTS/$TENANT.conf"

# Write the tenant's account block from `config render --accounts-only` output
# (file $1): without the `accounts {` line and the closing brace, so that every
# tenant's block goes into the one accounts block of the node configs. Atomic:
# a reloading server reads the old file or the new one.
write_account() {
    sed -e '/^accounts {$/d' -e '$d' "$1" > "$ACCOUNT.new"
    rm -f "$1"
    mv "$ACCOUNT.new" "$ACCOUNT"
    echo "wrote $ACCOUNT"
}

render() {
    trustbus --nkey "$ADMIN_SEED" config render --tenant "$TENANT" --accounts-only > "$ACCOUNT.rendered"
    write_account "$ACCOUNT.rendered"
}

case "${1:-}" in
bootstrap)
    if [ -e "$ACCOUNT" ]; then
        echo "$ACCOUNT exists: the tenant is bootstrapped (render it again with: provision.sh render)"
        exit 0
    fi
    trustbus config render --tenant "$TENANT" --bootstrap --accounts-only --keys "$KEYS" > "$ACCOUNT.rendered"
    write_account "$ACCOUNT.rendered"
    ;;
provision)
    # The nodes answer their health check once JetStream is on; an R3 stream
    # needs the cluster's meta leader too, elected moments later: retry init.
    tries=0
    until trustbus --nkey "$ADMIN_SEED" init --tenant "$TENANT" --keys "$KEYS" --replicas "$REPLICAS"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 30 ]; then
            echo "init failed $tries times: is the cluster up (docker compose ps)?" >&2
            exit 1
        fi
        echo "init: cluster not ready for $REPLICAS replicas yet, retrying in 2s" >&2
        sleep 2
    done
    for pair in $OWNERS; do
        owner=${pair%%:*}
        role=${pair#*:}
        if [ -e "$KEYS/$TENANT/$owner.seed" ]; then
            echo "key of $owner exists"
        else
            trustbus --nkey "$ADMIN_SEED" keys new --tenant "$TENANT" --keys "$KEYS" --owner "$owner" --role "$role"
        fi
    done
    render
    echo "reload every node now, twice if agents were added: docker compose kill -s SIGHUP nats-1 nats-2 nats-3"
    ;;
render)
    render
    echo "reload every node now, twice if agents were added: docker compose kill -s SIGHUP nats-1 nats-2 nats-3"
    ;;
*)
    echo "usage: provision.sh bootstrap|provision|render" >&2
    exit 2
    ;;
esac
