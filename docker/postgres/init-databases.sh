#!/bin/sh
# First start of the PostgreSQL volume only (docker-entrypoint-initdb.d): one database and one role each for
# Prefect and MLflow, so neither service can read or drop the other's data. Passwords come from the
# environment (.env), never from this file.
set -eu

: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD (see docker/env.example)}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD (see docker/env.example)}"
PREFECT_DB_NAME="${PREFECT_DB_NAME:-prefect}"
MLFLOW_DB_NAME="${MLFLOW_DB_NAME:-mlflow}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v prefect_db="$PREFECT_DB_NAME" -v prefect_pw="$PREFECT_DB_PASSWORD" \
  -v mlflow_db="$MLFLOW_DB_NAME" -v mlflow_pw="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE :"prefect_db" OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE :"mlflow_db" OWNER mlflow;
REVOKE ALL ON DATABASE :"prefect_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
SQL

# Prefect's migrations need pg_trgm; create it as the superuser so the prefect role needs no extra rights.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$PREFECT_DB_NAME" \
  -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm;'
