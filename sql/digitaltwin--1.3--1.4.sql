/* digitaltwin--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.4'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Version 1.4: trust.  Every statement the extension runs with rights other
-- than the caller's pins search_path = pg_catalog, pg_temp and qualifies its
-- operators (docs/architecture.md, "Trust rules").
--------------------------------------------------------------------------

-- send() runs as its caller; pinned all the same, so that it behaves the
-- same whatever the caller's search_path (inside a model too).
CREATE OR REPLACE FUNCTION digitaltwin.send(model text, twin_id text, payload jsonb)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    VALUES ($1, $2, $3)
    RETURNING id
$$;

-- [section: model protection (ALTER of state types)]

--------------------------------------------------------------------------
-- A model's state type cannot be altered under it
--
-- Twin states are stored as binary images of the state type (twin_state,
-- shared memory), and model code reads the state's attributes by name: an
-- attribute added, dropped, retyped or renamed made every event of the
-- model dead-letter and the stored images unreadable.  A ddl_command_end
-- event trigger refuses, like the sql_drop trigger of 1.3 refuses DROP, the
-- ALTERs that change the attributes of a model's state type or of any type
-- inside it (attributes of composite types, array elements, domain base
-- types, range subtypes), followed recursively:
--   ALTER TYPE ... ADD / DROP / ALTER / RENAME ATTRIBUTE of a composite type,
--   ALTER TABLE (VIEW, FOREIGN TABLE) ... ADD / DROP / ALTER TYPE / RENAME
--   COLUMN of a relation whose row type is protected, of a parent it
--   inherits its columns from, or of the type a typed table is OF.
-- Allowed, because stored images and model code keep working: OWNER TO,
-- RENAME TO and SET SCHEMA of the type (models refer to it by OID),
-- COMMENT, ALTER TYPE ... ADD / RENAME VALUE of an enum (values are stored
-- by OID), constraints, defaults, storage and options of a table, and
-- ALTER DOMAIN (it cannot change the base type; a new constraint is not
-- checked against stored states, only against values the model returns).
-- Which ALTER TABLE subcommands a command ran only C can tell
-- (digitaltwin._alters_row_type).  Changing a model's state type means a
-- new type and a new model (a later version will offer alter_model).
--
-- SECURITY DEFINER, search_path pinned, operators and types qualified:
-- the trigger runs for whoever alters a type, with that role's settings.
-- A superuser can bypass it (ALTER EVENT TRIGGER ... DISABLE).
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin._alters_row_type(command pg_catalog.pg_ddl_command)
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_alters_row_type'
LANGUAGE C STRICT STABLE;

COMMENT ON FUNCTION digitaltwin._alters_row_type(pg_catalog.pg_ddl_command) IS
'Internal: whether a command collected by an event trigger adds, drops, retypes or renames a column or attribute.';

REVOKE ALL ON FUNCTION digitaltwin._alters_row_type(pg_catalog.pg_ddl_command) FROM PUBLIC;

CREATE FUNCTION digitaltwin.protect_model_types()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- the recursive query's estimates are huge whatever it finds (it usually
-- finds nothing): JIT would compile it, 0.4 s, at every ALTER TABLE
SET jit = off
AS $$
DECLARE
    used record;
BEGIN
    WITH RECURSIVE
    -- each model's state type and every type inside it
    protected(typ, model, state_type) AS (
        SELECT m.state_type::pg_catalog.oid, m.name, m.state_type
        FROM digitaltwin.models m
      UNION
        SELECT inner_type.oid, p.model, p.state_type
        FROM protected p
        CROSS JOIN LATERAL (
            SELECT t.typelem
            FROM pg_catalog.pg_type t
            WHERE t.oid OPERATOR(pg_catalog.=) p.typ
              AND t.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid
          UNION ALL
            SELECT t.typbasetype
            FROM pg_catalog.pg_type t
            WHERE t.oid OPERATOR(pg_catalog.=) p.typ
              AND t.typtype OPERATOR(pg_catalog.=) 'd'::pg_catalog."char"
          UNION ALL
            SELECT a.atttypid
            FROM pg_catalog.pg_type t
            JOIN pg_catalog.pg_attribute a
              ON a.attrelid OPERATOR(pg_catalog.=) t.typrelid
            WHERE t.oid OPERATOR(pg_catalog.=) p.typ
              AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2
              AND NOT a.attisdropped
          UNION ALL
            SELECT r.rngsubtype
            FROM pg_catalog.pg_range r
            WHERE r.rngtypid OPERATOR(pg_catalog.=) p.typ
          UNION ALL
            SELECT r.rngtypid
            FROM pg_catalog.pg_range r
            WHERE r.rngmultitypid OPERATOR(pg_catalog.=) p.typ
        ) inner_type(oid)
    ),
    -- the relations whose columns are those types' attributes
    protected_rel(relid, typ, model, state_type) AS (
        SELECT t.typrelid, p.typ, p.model, p.state_type
        FROM protected p
        JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) p.typ
        WHERE t.typrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid
      UNION
        SELECT up.relid, r.typ, r.model, r.state_type
        FROM protected_rel r
        CROSS JOIN LATERAL (
            -- a parent passes its column changes down to its children
            SELECT i.inhparent
            FROM pg_catalog.pg_inherits i
            WHERE i.inhrelid OPERATOR(pg_catalog.=) r.relid
          UNION ALL
            -- ALTER TYPE ... CASCADE passes them to tables OF the type
            SELECT ot.typrelid
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_type ot ON ot.oid OPERATOR(pg_catalog.=) c.reloftype
            WHERE c.oid OPERATOR(pg_catalog.=) r.relid
        ) up(relid)
    )
    SELECT d.command_tag, d.object_identity, r.model,
           r.typ::pg_catalog.regtype AS typ, r.state_type
    INTO used
    FROM pg_catalog.pg_event_trigger_ddl_commands() d
    JOIN protected_rel r
      ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
     AND d.objid OPERATOR(pg_catalog.=) r.relid
    WHERE digitaltwin._alters_row_type(d.command)
    ORDER BY r.model
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot alter % because digitaltwin model "%" uses it',
                        used.object_identity, used.model
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = pg_catalog.format('%s changes the attributes of type %s, which is or is part of the model''s state type %s: its events would fail and its stored twin states could no longer be read.',
                                             used.command_tag, used.typ, used.state_type),
                  HINT = 'Create a new type and a new model that uses it (a later version will offer alter_model).';
    END IF;
END
$$;

COMMENT ON FUNCTION digitaltwin.protect_model_types() IS
'Event trigger function: refuses ALTER TYPE / ALTER TABLE that adds, drops, retypes or renames an attribute of a registered model''s state type or of a type within it.';

REVOKE ALL ON FUNCTION digitaltwin.protect_model_types() FROM PUBLIC;

CREATE EVENT TRIGGER digitaltwin_protect_model_types ON ddl_command_end
    WHEN TAG IN ('ALTER TYPE', 'ALTER TABLE', 'ALTER VIEW',
                 'ALTER FOREIGN TABLE', 'CREATE VIEW')
    EXECUTE FUNCTION digitaltwin.protect_model_types();

COMMENT ON EVENT TRIGGER digitaltwin_protect_model_types IS
'digitaltwin: the attributes of a model''s state type (and of types within it) cannot be altered while the model exists.';

-- 1.3's DROP protection, its operators qualified: an unqualified = is
-- resolved through the search_path, and the trigger runs for anyone.
CREATE OR REPLACE FUNCTION digitaltwin.protect_model_objects()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    used record;
BEGIN
    SELECT d.object_type, d.object_identity, m.name AS model
    INTO used
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    JOIN digitaltwin.models m
      ON (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
          AND (d.objid OPERATOR(pg_catalog.=) m.process::pg_catalog.oid
               OR d.objid OPERATOR(pg_catalog.=) m.init::pg_catalog.oid))
      OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
          AND d.objid OPERATOR(pg_catalog.=) m.state_type::pg_catalog.oid)
    ORDER BY m.name
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot drop % % because digitaltwin model "%" uses it',
                        used.object_type, used.object_identity, used.model
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = pg_catalog.format('Drop the model first: SELECT digitaltwin.drop_model(%L);',
                                           used.model);
    END IF;
END
$$;

-- [end section: model protection]

-- [section: chain depth]

--------------------------------------------------------------------------
-- Chains of events sent by models are bounded
--
-- A model that sends events to itself (or two models that send to each
-- other) multiplied without bound.  Each event now carries its depth: 0
-- when an application sent it, the depth of the event being processed + 1
-- when a model sent it.  The default computes it; a depth beyond
-- digitaltwin.max_message_depth is an error in the sending model, whose
-- event is dead-lettered.  Writers may insert only (model, twin_id,
-- payload) and cannot set a depth.
--
-- STABLE, not VOLATILE: COPY into the queue keeps inserting in batches
-- (a volatile default makes it insert row by row), and ADD COLUMN stores
-- the value for existing rows (0) in the catalog instead of rewriting the
-- partitions, which get the column at the same position as the parent.
-- PARALLEL RESTRICTED: it reads the worker's current event, which a
-- parallel worker does not have.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin._event_depth()
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_event_depth'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin._event_depth() IS
'Internal: default of digitaltwin.events.depth; 0 outside a model, the depth of the event being processed + 1 inside one (an error beyond digitaltwin.max_message_depth).';

ALTER TABLE digitaltwin.events
    ADD COLUMN depth integer NOT NULL DEFAULT digitaltwin._event_depth();

COMMENT ON COLUMN digitaltwin.events.depth IS
'Number of model-sent events from the application''s event to this one (0: sent by an application).';

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
