/* digitaltwin--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.4'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.4: trust.  Every statement the extension runs with rights other
-- than the caller's pins search_path = pg_catalog, pg_temp and qualifies its
-- operators (docs/architecture.md, "Trust rules").
--------------------------------------------------------------------------

-- [section: model protection (ALTER of state types)]

-- [end section: model protection]

-- [section: chain depth]

-- [end section: chain depth]

-- [section: backup (configuration tables)]

--------------------------------------------------------------------------
-- A logical backup restores every model, twin, alert, dead letter and
-- queued event
--
-- pg_dump leaves out the rows of an extension's tables unless they are
-- marked as configuration tables: until 1.4 a dump restored an empty
-- extension.  Marked here: the models, the durable twin states, the alerts
-- and dead letters, and the three queue partitions (the events not consumed
-- yet; the partitioned parent holds no rows of its own).  The identity
-- sequences go with them, so that ids continue after a restore: an event id
-- used twice would collide in dead_letters (its primary key) and in the
-- de-duplication of alerts by event id, and wait_idle() reads the queue's
-- position from events_id_seq.
--
-- Not dumped: digitaltwin.queue_state.  Its singleton row is inserted by
-- the install script, so the restore would collide with it; and a restored
-- queue is safe with a fresh generation: workers read all three partitions,
-- and the rotation truncates a partition only once it is empty (checked
-- under its lock), so restored events in any partition are consumed before
-- their partition is truncated.
--------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.models', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.models_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.twin_state', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.alerts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.events_0', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.events_1', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.events_2', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.events_id_seq', '');

--------------------------------------------------------------------------
-- Restore order: models before the queued events
--
-- The CHECK constraint of digitaltwin.events (event_valid) refuses an event
-- whose model does not exist, so the queue partitions can only be restored
-- after digitaltwin.models.  pg_dump orders the data of configuration
-- tables by the foreign keys between them (and otherwise by name, which
-- would put events_0 before models), and pg_restore restores in the
-- archive's order.  (pg_restore -j does not: an archive records no
-- dependency between two tables' data, so the extension's data is restored
-- in a second, serial step; README, "Backup and restore".)  twin_state
-- already references models.  Each queue partition gets a foreign key to
-- models(name) for that ordering only:
--   - NOT VALID: an update of an older install does not check the events
--     already queued (nor lock the queue for a scan);
--   - its RI triggers are disabled, on both sides: inserting events costs
--     nothing more (event_valid already checks the model), and drop_model()
--     may delete a model whose events are still queued (it dead-letters
--     them; a worker may also be consuming them concurrently).  A disabled
--     trigger never fires, whatever session_replication_role is.  The
--     planner uses only validated foreign keys, so the constraint changes
--     no plan either.
-- The constraint is part of the extension's own definition, never dumped
-- itself: CREATE EXTENSION on the target creates it again.
--------------------------------------------------------------------------

DO $$
DECLARE
    p text;
    trig record;
BEGIN
    FOREACH p IN ARRAY ARRAY['events_0', 'events_1', 'events_2']
    LOOP
        EXECUTE pg_catalog.format(
            'ALTER TABLE digitaltwin.%I ADD CONSTRAINT %I '
            'FOREIGN KEY (model) REFERENCES digitaltwin.models (name) NOT VALID',
            p, p || '_restore_order');
        EXECUTE pg_catalog.format(
            'COMMENT ON CONSTRAINT %I ON digitaltwin.%I IS %L',
            p || '_restore_order', p,
            'Never checked (NOT VALID, triggers disabled): makes pg_dump restore digitaltwin.models before the queued events, which the CHECK constraint event_valid would otherwise refuse.');
        FOR trig IN
            SELECT r.relname, t.tgname
            FROM pg_catalog.pg_trigger t
            JOIN pg_catalog.pg_constraint c ON c.oid OPERATOR(pg_catalog.=) t.tgconstraint
            JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) t.tgrelid
            WHERE c.conname OPERATOR(pg_catalog.=) (p || '_restore_order')
              AND c.conrelid OPERATOR(pg_catalog.=)
                  pg_catalog.format('digitaltwin.%I', p)::pg_catalog.regclass
        LOOP
            -- the referencing side (events_N) and the referenced (models)
            EXECUTE pg_catalog.format('ALTER TABLE digitaltwin.%I DISABLE TRIGGER %I',
                                      trig.relname, trig.tgname);
        END LOOP;
    END LOOP;
END
$$;

-- [end section: backup]
