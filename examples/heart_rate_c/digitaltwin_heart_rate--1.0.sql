/* digitaltwin_heart_rate--1.0.sql */

\echo Use "CREATE EXTENSION digitaltwin_heart_rate" to load this file. \quit

-- The init function reads the patients' medical records from a table
-- "patients" (patient_id text, age int, max_heart_rate int, conditions
-- text[]) found on the search_path of the role that creates this extension;
-- examples/heart_rate.sql creates and fills it.

CREATE FUNCTION @extschema@.heart_rate_c_init(twin_id text)
RETURNS bytea
AS 'MODULE_PATHNAME', 'heart_rate_c_init'
LANGUAGE C STRICT;

COMMENT ON FUNCTION @extschema@.heart_rate_c_init(text) IS
'C heart-rate model: binary starting state of a patient twin, from the patients table.';

CREATE FUNCTION @extschema@.heart_rate_c_process(twin_id text, state bytea, event jsonb)
RETURNS bytea
AS 'MODULE_PATHNAME', 'heart_rate_c_process'
LANGUAGE C STRICT;

COMMENT ON FUNCTION @extschema@.heart_rate_c_process(text, bytea, jsonb) IS
'C heart-rate model: apply one reading {"bpm": n} to a patient twin, alerting above the patient''s limit.';

CREATE FUNCTION @extschema@.heart_rate_c_summary(state bytea,
    OUT "limit" double precision, OUT readings bigint, OUT avg_bpm double precision,
    OUT max_bpm double precision, OUT last_bpm double precision, OUT over_streak integer)
AS 'MODULE_PATHNAME', 'heart_rate_c_summary'
LANGUAGE C STRICT IMMUTABLE;

COMMENT ON FUNCTION @extschema@.heart_rate_c_summary(bytea) IS
'Decode the binary state of a C heart-rate twin (as stored in digitaltwin.twin_state).';

SELECT digitaltwin.create_model('heart_rate_c',
                                '@extschema@.heart_rate_c_process(text,bytea,jsonb)',
                                '@extschema@.heart_rate_c_init(text)');
