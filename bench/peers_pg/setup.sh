#!/usr/bin/env bash
# Creates bench/peers_pg/.venv (git-ignored): the PostgreSQL peers at the versions in requirements.txt,
# and gojob from this checkout, editable. Needs uv and a Python >= 3.11.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
uv venv --python "$py" "$here/.venv"
export VIRTUAL_ENV="$here/.venv"
uv pip install -r "$here/requirements.txt"
uv pip install -e "$root" -e "$root/plugins/gojob-store-sql" -e "$root/plugins/gojob-store-postgres"
uv pip freeze --exclude-editable > "$here/requirements.lock.txt"
"$here/.venv/bin/python" -c "import procrastinate, pgqueuer, saq, psycopg, asyncpg, gojob_core, gojob_store_postgres"
echo "ok: $here/.venv"
