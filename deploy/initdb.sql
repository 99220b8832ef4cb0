-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d),
-- as POSTGRES_USER. Dagster's run/event/schedule storage lives in POSTGRES_DB
-- (DAGSTER_PG_DB, default `dagster`); the aindex catalog gets its own database so that
-- each side's migrations and backups stay apart.
CREATE DATABASE aindex;
