-- A least-privilege database role for primgr.
--
-- primgr runs one statement per poll cycle (OBSERVE_SQL in src/db.rs):
--   SELECT pg_is_in_recovery(), the WAL positions (pg_current_wal_lsn(),
--   pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_is_wal_replay_paused(),
--   pg_last_xact_replay_timestamp()), the WAL receiver (pg_stat_wal_receiver), and
--   node_id, node_name, type, active, location, conninfo
--   FROM repmgr.nodes,
-- and opens one short-lived connection per cycle besides (a new client can still connect).
-- The functions may be executed by PUBLIC, so the role needs exactly:
--   LOGIN, CONNECT on the repmgr database, USAGE on schema repmgr, SELECT on repmgr.nodes,
--   and membership in pg_read_all_stats for the WAL receiver's details (see below).
-- Not superuser, not REPLICATION, no write access anywhere. Without the SELECT
-- (or the USAGE) primgr reports Down with "permission denied ..." in /status and keeps serving.
--
-- Run once, on the primary, in the repmgr database, as a superuser (roles and grants
-- replicate to every standby); running it again is harmless. The package installs this file
-- as /usr/share/doc/primgr/least-privilege.sql:
--   psql -d repmgr -v ON_ERROR_STOP=1 -f /usr/share/doc/primgr/least-privilege.sql
-- Run it again after `ALTER EXTENSION repmgr UPDATE` in case the upgrade recreated the table.
-- If the repmgr database has another name, change it in GRANT CONNECT below.
--
-- Then let the service's OS user `primgr` (the unit's User=) in as this role, in pg_hba.conf
-- of EVERY node (before the broader repmgr lines), one of (README, "Installation"):
--   local  repmgr  primgr                peer map=primgr   -- unix socket, with pg_ident.conf:
--                                                          --   primgr  primgr  primgr
--     conninfo = "host=/var/run/postgresql dbname=repmgr user=primgr application_name=primgr"
--   host   repmgr  primgr  127.0.0.1/32  scram-sha-256     -- TCP, with the password below:
--     conninfo = "host=127.0.0.1 dbname=repmgr user=primgr password=... application_name=primgr"
-- contrib/package-test runs this very file and both ways against a scratch PostgreSQL 15.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'primgr') THEN
        CREATE ROLE primgr LOGIN;
    END IF;
END
$$;

-- Nothing beyond logging in. The connection limit leaves room for the pool
-- (max_connections_in_pool, 3 by default) plus a reconnect; raise it with the pool.
ALTER ROLE primgr LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 5;
-- Belt and braces: any transaction of this role is read-only.
ALTER ROLE primgr SET default_transaction_read_only = on;
-- For a TCP conninfo with scram-sha-256, set a password and put it in the conninfo of
-- /etc/primgr/primgr.toml (0640 root:primgr; primgr's driver reads no .pgpass or passfile):
--   \password primgr

GRANT CONNECT ON DATABASE repmgr TO primgr;
GRANT USAGE ON SCHEMA repmgr TO primgr;
GRANT SELECT ON repmgr.nodes TO primgr;
-- The WAL receiver's state and upstream (replication_state=streaming, /readiness, the lag
-- from the receiver) are visible only to members of pg_read_all_stats; without it every
-- replication_state check of a standby fails (its state reads "unknown") and the lag comes
-- from the primary's daemon alone. pg_read_all_stats also shows other sessions' queries in
-- pg_stat_activity: leave this line out if that matters more to you than those checks.
GRANT pg_read_all_stats TO primgr;
-- Tighter alternative to the line above, naming only the columns primgr reads:
--   GRANT SELECT (node_id, node_name, type, active, location, conninfo) ON repmgr.nodes TO primgr;
