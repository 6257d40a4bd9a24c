#!/bin/sh
# Install MIAD-MARK as system services where the units expect it (docs/service.md follows these steps):
#   the code in /opt/miadmark (the Orthanc plugin is loaded from there too) with its venv /opt/miadmark/.venv,
#   the system user `miadmark` (systemd-sysusers), the units in /etc/systemd/system,
#   /etc/miadmark (0750 root:miadmark) with example gateway.yaml / receiver.yaml (never replaced),
#   and with --keys DIR this site's keys in /etc/miadmark/keys: private keys 0600 owned by miadmark
#   (the service user reads them, nobody else), certificates 0644.
#
#   sudo packaging/install.sh [--keys DIR] [--root DIR]
#   --root DIR               install into DIR as if it were / (a test, an image); systemctl is not run
#   MIADMARK_REUSE_SITE=DIR  reuse the dependencies installed in DIR (a site-packages folder) instead of
#                            downloading torch (CI); the project itself is installed
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
ROOT=/
KEYS=
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root DIR}; shift 2 ;;
    --keys) KEYS=${2:?--keys DIR}; shift 2 ;;
    *) echo "usage: install.sh [--keys DIR] [--root DIR]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}
OPT="$R/opt/miadmark"

echo "code -> $OPT"
mkdir -p "$OPT"
if [ -d "$SRC/.git" ] || [ -f "$SRC/.git" ]; then
  (cd "$SRC" && git ls-files -z | xargs -0 tar -cf -) | tar -xf - -C "$OPT"
else
  (cd "$SRC" && tar --exclude=.venv --exclude=.git -cf - .) | tar -xf - -C "$OPT"
fi

echo "virtual environment -> $OPT/.venv"
"$PYTHON" -m venv "$OPT/.venv"
if [ -n "${MIADMARK_REUSE_SITE:-}" ]; then
  SITE=$("$OPT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$MIADMARK_REUSE_SITE" > "$SITE/miadmark-reuse.pth"
  "$OPT/.venv/bin/pip" install --quiet --no-deps "$OPT"
else
  "$OPT/.venv/bin/pip" install --quiet --no-cache-dir "torch==2.13.0" "$OPT"
fi
"$OPT/.venv/bin/miadmark" --version

echo "user miadmark (systemd-sysusers)"
mkdir -p "$R/etc"
install -D -m 0644 "$SRC/packaging/systemd/miadmark.sysusers.conf" "$R/usr/lib/sysusers.d/miadmark.conf"
systemd-sysusers --root="$ROOT" "$R/usr/lib/sysusers.d/miadmark.conf"
USER_ID=$(awk -F: '$1 == "miadmark" {print $3}' "$R/etc/passwd")
GROUP_ID=$(awk -F: '$1 == "miadmark" {print $3}' "$R/etc/group")
[ -n "$USER_ID" ] && [ -n "$GROUP_ID" ] || { echo "install.sh: user miadmark was not created" >&2; exit 1; }

echo "units -> $R/etc/systemd/system"
install -d "$R/etc/systemd/system"
install -m 0644 "$SRC"/packaging/systemd/miadmark-*.service "$R/etc/systemd/system/"

echo "configuration -> $R/etc/miadmark"
install -d -m 0750 -o 0 -g "$GROUP_ID" "$R/etc/miadmark" "$R/etc/miadmark/keys"
for name in gateway receiver; do
  if [ ! -e "$R/etc/miadmark/$name.yaml" ]; then  # an existing configuration is never replaced
    install -m 0640 -o 0 -g "$GROUP_ID" "$SRC/packaging/systemd/$name.yaml" "$R/etc/miadmark/$name.yaml"
  fi
done
if [ -n "$KEYS" ]; then
  for key in "$KEYS"/*.key.pem; do
    [ -e "$key" ] || continue
    install -m 0600 -o "$USER_ID" -g "$GROUP_ID" "$key" "$R/etc/miadmark/keys/"
  done
  for cert in "$KEYS"/*.cert.pem; do
    [ -e "$cert" ] || continue
    install -m 0644 -o 0 -g 0 "$cert" "$R/etc/miadmark/keys/"
  done
fi

if [ "$ROOT" = / ]; then
  systemctl daemon-reload
  echo "installed: edit /etc/miadmark/gateway.yaml (or receiver.yaml), then"
  echo "  sudo -u miadmark /opt/miadmark/.venv/bin/miadmark rules check --config /etc/miadmark/gateway.yaml"
  echo "  sudo systemctl enable --now miadmark-gateway      # or miadmark-receiver"
else
  echo "installed into $ROOT (systemctl not run)"
fi
