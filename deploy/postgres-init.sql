-- First start of the postgres container (docker-entrypoint-initdb.d): the second database and the extension
-- Prefect's migrations need (the local stack does the same in deploy/local/stack.py _create_databases).
CREATE DATABASE prefect;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
