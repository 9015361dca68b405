--
-- Rules-based models: create_rule_model() turns a JSON array of rules into
-- a model function of the caller's
--
CREATE TABLE sent_speeds AS
SELECT 'car-' || (i % 3) AS twin_id, i, 100 + (i * 7) % 60 AS speed
FROM generate_series(1, 30) i;
SELECT digitaltwin.create_rule_model('speeds', $$[
  {"when": "(event->>'speed')::int > 140",
   "alert": {"severity": "warning", "message": "'speed ' || (event->>'speed') || ' on ' || twin_id"},
   "set": {"speeding": "coalesce((state->>'speeding')::int, 0) + 1"},
   "outbox": "jsonb_build_object('cmd', 'slow_down', 'speed', event->'speed')"},
  {"when": "true",
   "set": {"speed": "(event->>'speed')::int", "n": "coalesce((state->>'n')::int, 0) + 1",
           "kind": "(digitaltwin.current_event()).kind"}},
  {"when": "event ? 'park'", "timer": {"name": "parked", "after": "interval '1 hour'"}}
]$$);
SELECT name, process, state_type, rules IS NOT NULL AS has_rules, jsonb_array_length(rules) AS rules
FROM digitaltwin.models WHERE name = 'speeds';
SELECT pg_get_userbyid(proowner) = current_user AS mine, (SELECT lanname FROM pg_language WHERE oid = prolang),
       obj_description(oid, 'pg_proc')
FROM pg_proc WHERE proname = 'speeds_rules_v1';
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'speeds', twin_id, jsonb_build_object('speed', speed) FROM sent_speeds ORDER BY i;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('speeds', 'car-0', '{"speed": 0, "park": true}');
SELECT digitaltwin.wait_idle('30s');
-- against the events sent
SELECT t.twin_id, t.state,
       (t.state->>'n')::int = count(*) + (t.twin_id = 'car-0')::int AS n_matches,
       coalesce((t.state->>'speeding')::int, 0) = count(*) FILTER (WHERE s.speed > 140) AS speeding_matches
FROM digitaltwin.twins t JOIN sent_speeds s USING (twin_id)
WHERE t.model = 'speeds' GROUP BY t.twin_id, t.state ORDER BY t.twin_id;
SELECT (SELECT count(*) FROM digitaltwin.alerts WHERE model = 'speeds') AS alerts,
       (SELECT count(*) FROM digitaltwin.outbox WHERE model = 'speeds') AS commands,
       (SELECT count(*) FROM sent_speeds WHERE speed > 140) AS expected;
SELECT message FROM digitaltwin.alerts WHERE model = 'speeds' ORDER BY message LIMIT 2;
SELECT twin_id, name FROM digitaltwin.timers WHERE model = 'speeds';

-- replaced, the twins kept: a new function, a new version
SELECT digitaltwin.alter_rule_model('speeds', $$[
  {"when": "true", "set": {"speed": "(event->>'speed')::int", "n": "coalesce((state->>'n')::int, 0) + 1", "v2": "true"}}
]$$) AS version;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('speeds', 'car-1', '{"speed": 99}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'speeds' AND twin_id = 'car-1';
SELECT name, version, process, rules->0->'set'->>'v2' AS v2 FROM digitaltwin.models WHERE name = 'speeds';
SELECT version, process FROM digitaltwin.model_versions WHERE model = 'speeds' ORDER BY version;

-- errors: each refused at creation, with the rule and the key
SELECT digitaltwin.create_rule_model('bad', '[{"when": "(event->>''speed'')::int >>> 3", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "set": {"x": "1 +"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true) FROM pg_class WHERE (true", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true); DROP TABLE sent_speeds; SELECT (true", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true --", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "set": {"x": "1 AS y"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "speed > 1", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "set": {"x": "no_such_function(event)"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "now()", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "sett": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true"}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "alert": {"severity": "info"}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "set": "x"}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "set": {}}]');
SELECT digitaltwin.create_rule_model('bad', '[{"when": "true", "timer": {"name": "t", "after": "5"}}]');
SELECT digitaltwin.create_rule_model('bad', format('[{"when": "true", "alert": {"severity": "%s", "message": "''m''"}}]', repeat('s', 65))::jsonb);
SELECT digitaltwin.create_rule_model('bad', '[42]');
SELECT digitaltwin.create_rule_model('bad', '[]');
SELECT digitaltwin.create_rule_model('bad', '{"when": "true"}');
SELECT digitaltwin.create_rule_model('bad', NULL);
SELECT digitaltwin.create_rule_model(NULL, '[{"when": "true", "set": {"x": "1"}}]');
SELECT digitaltwin.create_rule_model('speeds', '[{"when": "true", "set": {"x": "1"}}]');
SELECT digitaltwin.alter_rule_model('nonesuch', '[{"when": "true", "set": {"x": "1"}}]');
SELECT count(*) AS nothing_left_behind FROM pg_proc WHERE proname LIKE 'bad_rules%';
SELECT count(*) AS table_intact FROM sent_speeds;

-- an expression may hold anything in its literals, even the function's
-- own dollar quote
SELECT digitaltwin.create_rule_model('quoted', $j$[
  {"when": "'$dt_rules_0$' <> ''", "set": {"q": "'$dt_rules_0$ $$ '' \" ; END; $dt_rules_1$'"}}
]$j$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('quoted', 'q', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'quoted';

-- a function model cannot be altered as rules
CREATE FUNCTION plain(twin_id text, state jsonb, event jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT digitaltwin.create_model('plain', 'plain(text,jsonb,jsonb)');
SELECT digitaltwin.alter_rule_model('plain', '[{"when": "true", "set": {"x": "1"}}]');

-- rights: for admins; the function is the caller's, made with the
-- caller's rights (here: no CREATE on public)
CREATE ROLE dt_rules_admin IN ROLE digitaltwin_admin;
CREATE ROLE dt_rules_writer IN ROLE digitaltwin_writer;
SET ROLE dt_rules_writer;
SELECT digitaltwin.create_rule_model('w', '[{"when": "true", "set": {"x": "1"}}]');
RESET ROLE;
SET ROLE dt_rules_admin;
SELECT digitaltwin.create_rule_model('a', '[{"when": "true", "set": {"x": "1"}}]');
RESET ROLE;
CREATE SCHEMA rules_home AUTHORIZATION dt_rules_admin;
SET ROLE dt_rules_admin;
SET search_path = rules_home;
SELECT digitaltwin.create_rule_model('a', '[{"when": "true", "set": {"x": "1"}}]');
RESET search_path;
RESET ROLE;
SELECT pg_get_userbyid(p.proowner) AS owner, n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = 'a_rules_v1';
SELECT owner, search_path FROM digitaltwin.models WHERE name = 'a';

-- every expression is read with standard_conforming_strings on, as the
-- function will be: a caller's "off" cannot make a literal read as code
SET standard_conforming_strings = off;
SELECT digitaltwin.create_rule_model('scs', $j$[{"when": "'\\' IS NULL)::pg_catalog.bool, false) THEN NULL; END IF; state := state || jsonb_build_object($$injected$$, current_user); IF COALESCE((false --' IS NOT NULL\nAND true", "set": {"x": "true"}}]$j$);
SELECT digitaltwin.create_rule_model('scs', $j$[{"when": "true", "set": {"path": "'C:\\tmp'"}}]$j$);
RESET standard_conforming_strings;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('scs', 's', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'scs';
SELECT proconfig FROM pg_proc WHERE proname = 'scs_rules_v1';
-- names resolve as they were checked: a table's column before a parameter
CREATE TABLE rule_limits (state text, lim int);
INSERT INTO rule_limits VALUES ('on', 100);
SELECT digitaltwin.create_rule_model('scoped', $$[
  {"when": "(event->>'v')::int > (SELECT lim FROM rule_limits WHERE state = 'on')",
   "set": {"over": "true", "seen": "scoped_rules_v1.event->'v'"}}
]$$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('scoped', 's', '{"v": 150}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'scoped';
SELECT count(*) AS dead FROM digitaltwin.dead_letters WHERE model = 'scoped';
-- two replacements in one statement take two versions
SELECT digitaltwin.alter_rule_model('scoped', format('[{"when": "true", "set": {"v": "%s"}}]', i)::jsonb) AS version
FROM generate_series(1, 2) i;
-- alter_model() to functions: the model is no longer rules-based
SELECT digitaltwin.alter_model('scoped', 'plain(text,jsonb,jsonb)');
SELECT rules FROM digitaltwin.models WHERE name = 'scoped';
SELECT digitaltwin.alter_rule_model('scoped', '[{"when": "true", "set": {"x": "1"}}]');
-- the owner role itself replaces the rules, not a member of it: the new
-- function, the caller's, runs as the owner
CREATE ROLE dt_rules_owner IN ROLE digitaltwin_admin;
CREATE ROLE dt_rules_member IN ROLE dt_rules_owner, digitaltwin_admin;
CREATE SCHEMA rules_owned AUTHORIZATION dt_rules_owner;
SET ROLE dt_rules_owner;
SET search_path = rules_owned;
SELECT digitaltwin.create_rule_model('owned', '[{"when": "true", "set": {"x": "1"}}]');
RESET ROLE;
SET ROLE dt_rules_member;
SELECT digitaltwin.alter_rule_model('owned', '[{"when": "true", "set": {"x": "2"}}]');
RESET ROLE;
RESET search_path;
-- a name too long for its versions, a name whose functions remain
SELECT digitaltwin.create_rule_model(repeat('n', 51), '[{"when": "true", "set": {"x": "1"}}]');
SELECT digitaltwin.drop_model('scs', force => true);
SELECT digitaltwin.create_rule_model('scs', '[{"when": "true", "set": {"x": "1"}}]');

-- clean up: the functions are the users' objects and stay after the model
SELECT digitaltwin.drop_model(m, force => true) FROM unnest(ARRAY['speeds', 'quoted', 'plain', 'a', 'scoped', 'owned']) m;
SELECT count(*) AS functions_kept FROM pg_proc WHERE proname ~ '^(speeds|quoted|a)_rules_v\d$';
DELETE FROM digitaltwin.outbox WHERE model = 'speeds';
DROP FUNCTION speeds_rules_v1, speeds_rules_v2, quoted_rules_v1, plain, scs_rules_v1,
              scoped_rules_v1, scoped_rules_v2, scoped_rules_v3;
DROP TABLE rule_limits;
DROP SCHEMA rules_home, rules_owned CASCADE;
DROP ROLE dt_rules_admin, dt_rules_writer, dt_rules_member, dt_rules_owner;
DROP TABLE sent_speeds;
