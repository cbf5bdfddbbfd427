#!/bin/sh
# Enrolls this Linux host in a cis490 fleet: installs cis490-agent, creates the `cis490`
# user, writes the worker token to /etc/cis490/worker.token (0600, owned by that user) and
# /etc/cis490/agent.toml (which names it), runs the self-tests as that user (capability,
# then check-server: the server answers and accepts the token for this name), and enables
# the systemd unit. Stops with the reason when a self-test fails. Run as root from a
# checkout (or pass --binary).
#
#   sudo manifests/install-agent.sh --server http://pi.local:8787 \
#        --work-dir /opt/cis490/training [--token-file FILE] [--name NAME] \
#        [--ca-file ca.pem] [--cert-file NAME.pem --key-file NAME-key.pem] \
#        [--max-concurrent N] [--advertise cuda=false,ram_gib=8] [--binary PATH]
#
# For a TLS server, --ca-file is the lab CA (ca.pem from `cis490-reconciler certs init`),
# copied to /etc/cis490/ca.pem; for mTLS, --cert-file/--key-file are this agent's client
# certificate and key (`certs issue-agent NAME`), copied to /etc/cis490/agent.pem and
# /etc/cis490/agent-key.pem (the key 0600, owned by the service user).
#
# The token (per-worker from `cis490-reconciler tokens issue NAME`, or the shared one)
# comes from --token-file FILE, else from $CIS490_WORKER_TOKEN, else (visible to other
# users in the process list; avoid) --token TOKEN. Without any, an existing
# /etc/cis490/worker.token is kept.
set -eu

SERVER=""
WORK_DIR=""
TOKEN=""
TOKEN_FILE=""
NAME=""
MAX_CONCURRENT="1"
ADVERTISE=""
BINARY=""
CA_FILE=""
CERT_FILE=""
KEY_FILE=""
SERVICE_USER="cis490"
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "install-agent: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVER="$2"; shift 2 ;;
        --work-dir) WORK_DIR="$2"; shift 2 ;;
        --token) TOKEN="$2"; shift 2
            echo "install-agent: warning: --token puts the secret on the command line; prefer --token-file FILE or CIS490_WORKER_TOKEN" >&2 ;;
        --token-file) TOKEN_FILE="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --max-concurrent) MAX_CONCURRENT="$2"; shift 2 ;;
        --advertise) ADVERTISE="$2"; shift 2 ;;
        --binary) BINARY="$2"; shift 2 ;;
        --ca-file) CA_FILE="$2"; shift 2 ;;
        --cert-file) CERT_FILE="$2"; shift 2 ;;
        --key-file) KEY_FILE="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a user and a systemd unit)"
[ -n "$SERVER" ] || die "--server URL is required"
[ -n "$WORK_DIR" ] || die "--work-dir is required (the training checkout)"
[ -d "$WORK_DIR" ] || die "work dir $WORK_DIR does not exist"
[ -z "$CA_FILE" ] || [ -r "$CA_FILE" ] || die "cannot read the CA file $CA_FILE"
if [ -n "$CERT_FILE" ] || [ -n "$KEY_FILE" ]; then
    [ -n "$CERT_FILE" ] && [ -n "$KEY_FILE" ] || die "give --cert-file and --key-file together"
    [ -r "$CERT_FILE" ] || die "cannot read the certificate file $CERT_FILE"
    [ -r "$KEY_FILE" ] || die "cannot read the key file $KEY_FILE"
fi
case "$MAX_CONCURRENT" in ''|*[!0-9]*) die "--max-concurrent must be a number" ;; esac
if [ -n "$TOKEN_FILE" ]; then
    [ -z "$TOKEN" ] || die "give --token-file or --token, not both"
    [ -r "$TOKEN_FILE" ] || die "cannot read the token file $TOKEN_FILE"
    TOKEN=$(tr -d '[:space:]' <"$TOKEN_FILE")
    [ -n "$TOKEN" ] || die "the token file $TOKEN_FILE is empty"
elif [ -z "$TOKEN" ] && [ -n "${CIS490_WORKER_TOKEN:-}" ]; then
    TOKEN="$CIS490_WORKER_TOKEN"
fi

if [ -z "$BINARY" ]; then
    for candidate in "$HERE/../target/release/cis490-agent" "$(command -v cis490-agent || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then BINARY="$candidate"; break; fi
    done
fi
[ -n "$BINARY" ] && [ -x "$BINARY" ] ||
    die "no cis490-agent binary: build it (cargo build --release -p cis490-agent) or pass --binary"

echo "installing $BINARY to /usr/local/bin/cis490-agent"
install -m 0755 "$BINARY" /usr/local/bin/cis490-agent

if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    echo "creating system user $SERVICE_USER"
    useradd --system --home-dir /var/lib/cis490-agent --shell /usr/sbin/nologin "$SERVICE_USER"
fi
# GPU device nodes are group-owned by video/render on most distributions.
for group in video render; do
    if getent group "$group" >/dev/null 2>&1; then usermod -a -G "$group" "$SERVICE_USER"; fi
done
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/cis490-agent
install -d -m 0755 /etc/cis490

toml_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# The token lives in a file of its own that only root and the service user can read; the
# config (and the unit's command line) only name it.
TOKEN_PATH=/etc/cis490/worker.token
if [ -n "$TOKEN" ]; then
    TMP=$(mktemp)
    printf '%s\n' "$TOKEN" >"$TMP"
    install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$TMP" "$TOKEN_PATH"
    rm -f "$TMP"
    echo "wrote $TOKEN_PATH (0600, $SERVICE_USER)"
elif [ -e "$TOKEN_PATH" ]; then
    echo "keeping the existing $TOKEN_PATH"
else
    echo "no worker token given (--token-file FILE): the agent sends none"
fi

# TLS files: the CA and certificate are public; the key is as secret as a token.
CA_PATH=/etc/cis490/ca.pem
CERT_PATH=/etc/cis490/agent.pem
KEY_PATH=/etc/cis490/agent-key.pem
if [ -n "$CA_FILE" ]; then
    install -m 0644 "$CA_FILE" "$CA_PATH"
    echo "wrote $CA_PATH"
fi
if [ -n "$CERT_FILE" ]; then
    install -m 0644 "$CERT_FILE" "$CERT_PATH"
    install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$KEY_FILE" "$KEY_PATH"
    echo "wrote $CERT_PATH and $KEY_PATH (0600, $SERVICE_USER)"
fi

CONFIG=/etc/cis490/agent.toml
TMP=$(mktemp)
{
    echo "# Written by install-agent.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); see etc/agent.toml.example."
    echo "server = $(toml_string "$SERVER")"
    if [ -e "$TOKEN_PATH" ]; then echo "worker_token_file = $(toml_string "$TOKEN_PATH")"; fi
    if [ -e "$CA_PATH" ]; then echo "ca_file = $(toml_string "$CA_PATH")"; fi
    if [ -e "$CERT_PATH" ] && [ -e "$KEY_PATH" ]; then
        echo "cert_file = $(toml_string "$CERT_PATH")"
        echo "key_file = $(toml_string "$KEY_PATH")"
    fi
    if [ -n "$NAME" ]; then echo "name = $(toml_string "$NAME")"; fi
    echo "work_dir = $(toml_string "$WORK_DIR")"
    echo "state_dir = \"/var/lib/cis490-agent\""
    echo "max_concurrent = $MAX_CONCURRENT"
} >"$TMP"
install -m 0640 -o root -g "$SERVICE_USER" "$TMP" "$CONFIG"
rm -f "$TMP"
echo "wrote $CONFIG"

ADVERTISE_ARGS=""
[ -n "$ADVERTISE" ] && ADVERTISE_ARGS="--advertise $ADVERTISE"

echo "self-test: cis490-agent capability (as $SERVICE_USER)"
# shellcheck disable=SC2086
if ! runuser -u "$SERVICE_USER" -- /usr/local/bin/cis490-agent capability --config "$CONFIG" $ADVERTISE_ARGS; then
    die "the capability self-test failed; fix the message above, then run this script again"
fi

echo "self-test: cis490-agent check-server (as $SERVICE_USER): reach $SERVER with the credentials"
if ! runuser -u "$SERVICE_USER" -- /usr/local/bin/cis490-agent check-server --config "$CONFIG"; then
    die "the server check failed (unreachable server, untrusted certificate or refused credential, see above); fix it, then run this script again"
fi

UNIT=/etc/systemd/system/cis490-agent.service
install -m 0644 "$HERE/cis490-agent.service" "$UNIT"
if [ -n "$ADVERTISE" ]; then
    sed -i "s|^ExecStart=.*|ExecStart=/usr/local/bin/cis490-agent run --config $CONFIG --advertise $ADVERTISE|" "$UNIT"
fi
systemctl daemon-reload
systemctl enable --now cis490-agent.service
echo "enrolled: systemctl status cis490-agent; journalctl -u cis490-agent -f"
