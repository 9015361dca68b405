# A logical backup restores everything: pg_dump of a database using the
# extension, restored with pg_restore -1 into a database of another instance
# whose workers run (they serve it from its CREATE EXTENSION on), brings back
# the same models (functions, init, owner), the same twins (jsonb, composite
# and bytea states), alerts, dead letters and queued events, in an order
# that the queue's CHECK constraint accepts (also with pg_restore -j of all
# but the extension's data, then pg_restore -1 of that data); the restored
# instance serves the same twins, processes the queued events exactly as
# the dumped one does (nothing lost, nothing applied twice), and new events
# get fresh ids.
#
# To hold events in the queue, every model calls app.reading(), which takes
# a shared advisory lock: while the test holds that lock in a session of
# the database, the workers wait in their batch and the events stay queued
# (digitaltwin.model_timeout = 0: no cancel, no dead letter).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# --- node A: an ordinary role's models, processed events --------------------

my $node_a = DtTest::new_node('a', q{
digitaltwin.queue_rotation = '1s'
digitaltwin.model_timeout = 0
});
$node_a->start;
$node_a->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE ROLE modeler LOGIN;
GRANT digitaltwin_admin TO modeler;
CREATE SCHEMA app AUTHORIZATION modeler;
CREATE ROLE viewer;    -- in no group role: reads one model by grant_model()
});

# Three models of one role, each with an init function that reads an
# ordinary table: states in jsonb, in a composite type and in bytea (with
# bytes that are not text).  Negative readings raise (dead letters); round
# ones raise alerts.
$node_a->safe_psql('postgres', q{
SET ROLE modeler;
CREATE TABLE app.patients (id text PRIMARY KEY, baseline bigint NOT NULL);
INSERT INTO app.patients SELECT 't' || k, 1000 * k FROM generate_series(2, 10, 2) k;
CREATE TABLE app.sent (id bigserial PRIMARY KEY, model text NOT NULL,
                       twin text NOT NULL, v int NOT NULL);
CREATE FUNCTION app.base(twin text) RETURNS bigint LANGUAGE sql STABLE
AS $$ SELECT coalesce((SELECT baseline FROM app.patients WHERE id = twin), 0) $$;
CREATE FUNCTION app.reading(event jsonb) RETURNS int LANGUAGE plpgsql
AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    -- the gate: the test holds this lock to keep events queued
    PERFORM pg_advisory_xact_lock_shared(4242);
    IF v < 0 THEN
        RAISE EXCEPTION 'negative reading %', v;
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION app.acc_init(twin_id text) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('n', 0, 'sum', app.base(twin_id)) $$;
CREATE FUNCTION app.acc(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := app.reading(event);
BEGIN
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value', event);
    END IF;
    -- pending timers are users' data too
    PERFORM digitaltwin.set_timer('remind', '1 day', jsonb_build_object('v', v),
                                  CASE WHEN v % 2 = 0 THEN interval '1 hour' END);
    RETURN jsonb_build_object('n', (state->>'n')::bigint + 1,
                              'sum', (state->>'sum')::bigint + v);
END $$;

CREATE TYPE app.tally AS (n bigint, sum bigint);
CREATE FUNCTION app.comp_init(twin_id text) RETURNS app.tally LANGUAGE sql
AS $$ SELECT ROW(0, app.base(twin_id))::app.tally $$;
CREATE FUNCTION app.comp(twin_id text, state app.tally, event jsonb) RETURNS app.tally
LANGUAGE plpgsql AS $$
BEGIN
    RETURN ROW(state.n + 1, state.sum + app.reading(event))::app.tally;
END $$;

CREATE FUNCTION app.bin_init(twin_id text) RETURNS bytea LANGUAGE sql
AS $$ SELECT '\x00ff'::bytea || convert_to('0/' || app.base(twin_id), 'UTF8') $$;
CREATE FUNCTION app.bin(twin_id text, state bytea, event jsonb) RETURNS bytea
LANGUAGE plpgsql AS $$
DECLARE
    s text := convert_from(substring(state FROM 3), 'UTF8');
BEGIN
    RETURN '\x00ff'::bytea ||
           convert_to((split_part(s, '/', 1)::bigint + 1) || '/' ||
                      (split_part(s, '/', 2)::bigint + app.reading(event)), 'UTF8');
END $$;

SELECT digitaltwin.create_model('acc', 'app.acc(text,jsonb,jsonb)', 'app.acc_init(text)');
SELECT digitaltwin.create_model('comp', 'app.comp(text,app.tally,jsonb)', 'app.comp_init(text)');
SELECT digitaltwin.create_model('bin', 'app.bin(text,bytea,jsonb)', 'app.bin_init(text)');
});

# $n readings to each model, recorded in app.sent by the same statement;
# $part, if given, puts each event in that queue partition expression.
sub send_sql
{
	my ($n, $twins, $mult, $part) = @_;
	my $partcol = defined $part ? ', part' : '';
	my $partval = defined $part ? ", $part" : '';
	return qq{
WITH e AS MATERIALIZED (
    SELECT m AS model, 't' || (1 + i % $twins) AS twin, (i * $mult) % 101 - 4 AS v,
           i AS i
    FROM generate_series(1, $n) i, unnest(ARRAY['acc', 'comp', 'bin']) m),
s AS (INSERT INTO app.sent (model, twin, v) SELECT model, twin, v FROM e ORDER BY i, model)
INSERT INTO digitaltwin.events (model, twin_id, payload$partcol)
SELECT model, twin, jsonb_build_object('v', v)$partval FROM e ORDER BY i, model;
};
}

$node_a->safe_psql('postgres', send_sql(240, 8, 37));
is($node_a->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'A processed the first events');
is( $node_a->safe_psql('postgres', q{
SELECT (SELECT count(*) > 0 FROM digitaltwin.alerts) AND
       (SELECT count(*) > 0 FROM digitaltwin.dead_letters) AND
       (SELECT count(*) = 0 FROM digitaltwin.events)}),
	't', 'A has alerts and dead letters, and an empty queue');

# Version 1.8's data, made before the gate closes (a switch waits for the
# batches, which the gate would hold): a model at its second version, with
# an event log and a history in time partitions, and a paused model with
# held events.
$node_a->safe_psql('postgres', q{
SET ROLE modeler;
CREATE FUNCTION app.log1(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) $$;
CREATE FUNCTION app.log2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'v2', true) $$;
SELECT digitaltwin.create_model('logged', 'app.log1(text,jsonb,jsonb)');
SELECT digitaltwin.set_event_log('logged', '1 day');
SELECT digitaltwin.set_history('logged', '1 day');
SELECT digitaltwin.create_model('held', 'app.log1(text,jsonb,jsonb)');
});
# version 1.9: a typed view of a model, registered to go with it, and a
# rules-based model (its function is an ordinary one of its creator's)
$node_a->safe_psql('postgres', q{
SELECT digitaltwin.create_twin_view('logged', 'app.logged_view', 'n int, v2 boolean');
SET search_path = app;
SELECT digitaltwin.create_rule_model('ruled', '[{"when": "(event->>''i'')::int % 2 = 0", "set": {"even": "coalesce((state->>''even'')::int, 0) + 1"}}]');
RESET search_path;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'ruled', 'r' || i % 3, jsonb_build_object('i', i) FROM generate_series(1, 12) i;
SELECT digitaltwin.wait_idle('60s');
-- version 1.10: a per-model right, and statistics reset once
SELECT digitaltwin.grant_model('ruled', 'viewer', 'read');
SELECT digitaltwin.reset_stats('ruled');});
$node_a->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'logged', 'l' || i % 5, jsonb_build_object('i', i) FROM generate_series(1, 50) i;
SELECT digitaltwin.wait_idle('60s');
SET ROLE modeler;
SELECT digitaltwin.alter_model('logged', 'app.log2(text,jsonb,jsonb)');
SELECT digitaltwin.pause_model('held');
});
$node_a->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT m, 'l' || i % 5, jsonb_build_object('i', i)
FROM generate_series(51, 80) i, unnest(ARRAY['logged', 'held']) m ORDER BY i, m;
SELECT digitaltwin.wait_idle('60s');
});
$node_a->poll_query_until('postgres', q{
SELECT count(*) >= 2 FROM digitaltwin.log_partitions WHERE parent = 'event_log'})
  or die 'no event log partition';
is( $node_a->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.held_events) || '/' ||
       (SELECT count(*) FROM digitaltwin.event_log) || '/' ||
       (SELECT count(*) >= 10 FROM digitaltwin.state_history)}),
	'30/80/true', 'A holds events of a paused model, an event log and a history');

# Hold the gate of database $db: its workers wait in their next batch.
sub close_gate
{
	my ($node, $db) = @_;
	my $gate = $node->background_psql($db);
	$gate->query_safe('SELECT pg_advisory_lock(4242)');
	return $gate;
}

# Wait until a worker of $db waits at the gate.
sub gate_reached
{
	my ($node, $db) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT count(*) > 0 FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = '$db'
  AND wait_event_type = 'Lock' AND wait_event = 'advisory'});
}

# Events that stay queued: A's workers held at the gate, events put in each
# of the three queue partitions, new twins among them (t9, t10: their init
# runs when the workers go on, on A and on the restored node).
my $gate_a = close_gate($node_a, 'postgres');
$node_a->safe_psql('postgres', send_sql(90, 10, 53, 'i % 3'));
ok(gate_reached($node_a, 'postgres'), 'A\'s workers wait at the gate');
is( $node_a->safe_psql('postgres', q{
SELECT string_agg(part || ':' || n, ',' ORDER BY part)
FROM (SELECT part, count(*) AS n FROM digitaltwin.events GROUP BY part) p}),
	'0:90,1:90,2:90', 'A holds queued events in each partition');

# --- the dump -----------------------------------------------------------------

my $dir = PostgreSQL::Test::Utils::tempdir;
$node_a->command_ok([ 'pg_dumpall', '--globals-only', '-f', "$dir/globals.sql" ],
	'pg_dumpall --globals-only');
$node_a->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/a.dump", 'postgres' ], 'pg_dump -Fc');

# The archive restores the models before the queue partitions, whose CHECK
# constraint refuses events of unknown models.
my ($toc) = run_command([ 'pg_restore', '-l', "$dir/a.dump" ]);
my @data = $toc =~ /(?:TABLE DATA|SEQUENCE SET) digitaltwin (\S+) /g;
# the time partitions worker 0 created are the user's tables, named by time
my @time_parts = grep { /_\d{8}_\d{6}$/ } @data;
@data = grep { !/_\d{8}_\d{6}$/ } @data;
cmp_ok(scalar(grep { /^event_log_/ } @time_parts), '>=', 1, 'the dump has the event log\'s partitions');
cmp_ok(scalar(grep { /^state_history_/ } @time_parts), '>=', 1, 'the dump has the history\'s partitions');
my %pos = map { $data[$_] => $_ } 0 .. $#data;
is( join(',', sort @data),
	'alerts,alerts_id_seq,cluster_map,cluster_node_name,cluster_nodes,cluster_shard,dead_letters,event_log_default,events_0,events_1,events_2,events_id_seq,held_events,log_partitions,model_counters,model_grants,model_stats_resets,model_versions,models,models_id_seq,outbox,outbox_id_seq,rehearsal_alerts,rehearsal_dead_letters,rehearsal_outbox,rehearsal_twins,rehearsals,rehearsals_id_seq,state_history_default,timer_state,twin_state,twin_views',
	'the dump has the data of every table holding users\' data')
  or diag($toc);
ok( defined $pos{models}
	  && (grep { defined $pos{$_} && $pos{$_} > $pos{models} }
		  qw(events_0 events_1 events_2 twin_state timer_state)) == 5,
	'the models come before the queued events, the twins and the timers')
  or diag($toc);
unlike($toc, qr/TABLE DATA digitaltwin queue_state/, 'queue_state is not dumped');

# What A holds, to compare with the restored node.
# Worker 0 creates the partitions of the current and the next period: a
# restore after the hour turned adds one more, which A never had.  A's
# partitions are those up to the period after this time.
my $partitions_until = $node_a->safe_psql('postgres',
	q{SELECT now() + current_setting('digitaltwin.log_partition_interval')::interval});
my %q = (
	models => q{
SELECT id, name, process::text, init::text, state_type::text, owner::text, search_path, created_at
FROM digitaltwin.models ORDER BY id},
	twins => q{
SELECT model, twin_id, state::text, event_count, updated_at FROM digitaltwin.twins
ORDER BY model, twin_id},
	durable => q{
SELECT m.name, s.twin_id, s.event_count, s.updated_at,
       CASE WHEN m.state_type = 'app.tally'::regtype THEN NULL ELSE s.state END
FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id
ORDER BY 1, 2},
	alerts => q{
SELECT id, model, twin_id, severity, message, details::text, event_id, raised_at
FROM digitaltwin.alerts ORDER BY id},
	dead_letters => q{
SELECT event_id, model, twin_id, payload::text, error, sqlstate, enqueued_at, failed_at
FROM digitaltwin.dead_letters ORDER BY event_id},
	timers => q{
SELECT model, twin_id, name, due_at, every, payload::text FROM digitaltwin.timers
ORDER BY model, twin_id, name},
	queued => q{
SELECT id, model, twin_id, payload::text, enqueued_at, part FROM digitaltwin.events ORDER BY id},
	versions => q{
SELECT model, version, process::text, init::text, state_type::text, created_at, created_by::text
FROM digitaltwin.model_versions ORDER BY model, version},
	held => q{
SELECT id, model, twin_id, payload::text, enqueued_at FROM digitaltwin.held_events ORDER BY id},
	paused => q{SELECT name, version, state_version, paused_at FROM digitaltwin.models ORDER BY name},
	event_log => q{
SELECT event_id, model, model_version, twin_id, kind, payload::text, logged_at, tableoid::regclass::text
FROM digitaltwin.event_log ORDER BY event_id},
	history => q{
SELECT model, twin_id, state::text, event_count, valid_from FROM digitaltwin.state_history
ORDER BY model, twin_id, valid_from},
	partitions => qq{SELECT name, parent, from_time, to_time FROM digitaltwin.log_partitions
WHERE from_time <= '$partitions_until' ORDER BY name},
	typed_view => q{SELECT twin_id, n, v2, event_count FROM app.logged_view ORDER BY twin_id},
	typed_views => q{SELECT view::text, columns FROM digitaltwin.twin_views ORDER BY 1},
	rules => q{SELECT name, process::text, rules::text FROM digitaltwin.models WHERE rules IS NOT NULL},
	grants => q{
SELECT m.name, g.grantee::text, g.privilege, g.granted_by::text, g.granted_at
FROM digitaltwin.model_grants g JOIN digitaltwin.models m ON m.id = g.model_id ORDER BY 1, 2, 3},
	counters => q{
SELECT model, events_processed, dead_letters, alerts, stats_since
FROM digitaltwin.model_stats ORDER BY 1},
	sequences => q{
SELECT (SELECT last_value FROM digitaltwin.models_id_seq) || '/' ||
       (SELECT last_value FROM digitaltwin.alerts_id_seq) || '/' ||
       (SELECT last_value FROM digitaltwin.events_id_seq)},
);
my %on_a = map { $_ => $node_a->safe_psql('postgres', $q{$_}) } keys %q;
my $tally_a = $node_a->safe_psql('postgres', q{SELECT 'app.tally'::regtype::oid});

# What A holds once it has processed the queued events: the restored
# databases must end up the same (without the times of processing, and the
# composite states, whose bytes hold the type's OID, compared as text).
my %after = (
	twins => q{
SELECT model, twin_id, state::text, event_count FROM digitaltwin.twins
ORDER BY model, twin_id},
	durable => q{
SELECT m.name, s.twin_id, s.event_count,
       CASE WHEN m.state_type = 'app.tally'::regtype THEN NULL ELSE s.state END
FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id
ORDER BY 1, 2},
	alerts => q{
SELECT model, twin_id, severity, message, details::text, event_id
FROM digitaltwin.alerts ORDER BY event_id, id},
	dead_letters => q{
SELECT event_id, model, twin_id, payload::text, error, sqlstate, enqueued_at
FROM digitaltwin.dead_letters ORDER BY event_id},
	timers => q{
SELECT model, twin_id, name, every, payload::text FROM digitaltwin.timers
ORDER BY model, twin_id, name},
	queued => q{SELECT count(*) FROM digitaltwin.events},
);
$gate_a->query_safe('SELECT pg_advisory_unlock(4242)');
$gate_a->quit;
is($node_a->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'A processed the queued events once the gate opened');
my %after_a = map { $_ => $node_a->safe_psql('postgres', $after{$_}) } keys %after;
cmp_ok(scalar(split /\n/, $after_a{twins}), '>', scalar(split /\n/, $on_a{twins}),
	'the queued events made new twins on A');
$node_a->stop;

# --- node B: roles first, then the restore into databases its workers serve
# (held at the gate until every restored table has been compared) ----------

my $node_b = DtTest::new_node('b', q{
digitaltwin.model_timeout = 0
});
$node_b->start;
# the bootstrap superuser exists already: its CREATE ROLE fails, harmlessly
$node_b->psql('postgres', slurp_file("$dir/globals.sql"), on_error_stop => 0);
is($node_b->safe_psql('postgres', q{SELECT pg_has_role('modeler', 'digitaltwin_admin', 'MEMBER')}),
	't', 'the roles are restored first');
# another instance: OIDs are not the same (checked below)
$node_b->safe_psql('postgres', q{
DO $$ BEGIN
    FOR i IN 1 .. 30 LOOP
        EXECUTE format('CREATE TYPE burn_%s AS (a int)', i);
    END LOOP;
END $$;
});
$node_b->safe_psql('postgres', 'CREATE DATABASE restored');
$node_b->safe_psql('postgres', 'CREATE DATABASE restored_parallel');
my %gate_b = map { $_ => close_gate($node_b, $_) } qw(restored restored_parallel);
# pg_restore succeeds (its errors are shown if not)
sub restore_ok
{
	my ($node, $db, $opts, $what) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pg_restore', @$opts, '-h', $node->host, '-p', $node->port,
			'-d', $db, "$dir/a.dump"
		],
		'>', \$out, '2>', \$err);
	ok($ok, $what) or diag($err);
	return;
}
restore_ok($node_b, 'restored', ['-1'],
	'pg_restore -1 into a database of another instance, its workers running');

# pg_restore -j loads tables' data in parallel, in any order: everything but
# the extension's data in parallel, then that data in the archive's order.
my @main = grep { !/ (TABLE DATA|SEQUENCE SET) digitaltwin / } split /\n/, $toc;
my @ext = grep { / (TABLE DATA|SEQUENCE SET) digitaltwin / } split /\n/, $toc;
PostgreSQL::Test::Utils::append_to_file("$dir/main.list", join("\n", @main) . "\n");
PostgreSQL::Test::Utils::append_to_file("$dir/ext.list", join("\n", @ext) . "\n");
restore_ok($node_b, 'restored_parallel', [ '-j', '2', '-L', "$dir/main.list" ],
	'pg_restore -j 2 of all but the extension\'s data');
restore_ok($node_b, 'restored_parallel', [ '-1', '-L', "$dir/ext.list" ],
	'then pg_restore -1 of the extension\'s data, in order');
isnt($node_b->safe_psql('restored', q{SELECT 'app.tally'::regtype::oid}), $tally_a,
	'the composite state type has another OID after the restore');

# B's workers serve both databases and wait at their gates with the
# restored events: nothing has been processed yet.
foreach my $db (qw(restored restored_parallel))
{
	ok(DtTest::wait_workers($node_b, $db, 2), "$db: B's workers serve it");
	ok(gate_reached($node_b, $db), "$db: B's workers took the restored events");
}
foreach my $what (sort keys %q)
{
	is($node_b->safe_psql('restored', $q{$what}), $on_a{$what}, "restored: same $what as A");
}
foreach my $what (sort keys %q)
{
	is($node_b->safe_psql('restored_parallel', $q{$what}), $on_a{$what},
		"restored in parallel: same $what as A");
}

# --- B processes the restored queue ---------------------------------------------

foreach my $db (qw(restored restored_parallel))
{
	$gate_b{$db}->query_safe('SELECT pg_advisory_unlock(4242)');
	$gate_b{$db}->quit;
	is($node_b->safe_psql($db, q{SELECT digitaltwin.wait_idle('60s')}), 't',
		"$db: B processed the restored queue");
	foreach my $what (sort keys %after)
	{
		is($node_b->safe_psql($db, $after{$what}), $after_a{$what},
			"$db: after processing the queued events, the same $what as A");
	}
}

# new events after the restore: fresh ids
my ($last_event_id) = $on_a{sequences} =~ m{/(\d+)$};
my $new_id = $node_b->safe_psql('restored', q{
WITH s AS (INSERT INTO app.sent (model, twin, v) VALUES ('acc', 't11', 30), ('comp', 't11', -1))
SELECT min(digitaltwin.send(m, 't11', jsonb_build_object('v', v)))
FROM (VALUES ('acc', 30), ('comp', -1)) x(m, v)});
cmp_ok($new_id, '>', $last_event_id, 'a new event gets an id above every restored one');
is($node_b->safe_psql('restored', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'B processed the new events');

is($node_b->safe_psql('restored', 'SELECT count(*) FROM digitaltwin.events'), '0',
	'the queue is empty');
is($node_b->safe_psql('restored', q{SELECT count(*) FROM digitaltwin.models WHERE owner = 'modeler'::regrole}),
	'5', 'the models still belong to their role');

# Every twin equals its init state plus each accepted reading applied once.
is( $node_b->safe_psql('restored', q{
WITH e AS (
    SELECT s.model, s.twin, count(*) AS n, sum(s.v) + coalesce(min(p.baseline), 0) AS total
    FROM app.sent s LEFT JOIN app.patients p ON p.id = s.twin
    WHERE s.v >= 0 GROUP BY s.model, s.twin),
t AS (
    SELECT model, twin_id, (state->>'n')::bigint AS n, (state->>'sum')::bigint AS total,
           event_count
    FROM digitaltwin.twins WHERE model IN ('acc', 'comp')
    UNION ALL
    SELECT m.name, s.twin_id,
           split_part(convert_from(substring(s.state FROM 3), 'UTF8'), '/', 1)::bigint,
           split_part(convert_from(substring(s.state FROM 3), 'UTF8'), '/', 2)::bigint,
           s.event_count
    FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id
    WHERE m.name = 'bin' AND substring(s.state FROM 1 FOR 2) = '\x00ff'::bytea)
SELECT count(*) FILTER (WHERE e.n IS DISTINCT FROM t.n OR e.total IS DISTINCT FROM t.total
                           OR t.event_count IS DISTINCT FROM t.n) || '/' || count(*)
FROM e FULL JOIN t ON t.model = e.model AND t.twin_id = e.twin}),
	'0/' . $node_b->safe_psql('restored', q{
SELECT count(*) FROM (SELECT DISTINCT model, twin FROM app.sent WHERE v >= 0) x}),
	'every twin equals its init state and its readings applied once');

is( $node_b->safe_psql('restored', q{
SELECT (SELECT count(*) FROM digitaltwin.alerts) || '/' ||
       (SELECT count(DISTINCT event_id) FROM digitaltwin.alerts) || '/' ||
       (SELECT count(*) FROM app.sent WHERE model = 'acc' AND v >= 0 AND v % 10 = 0)}),
	join('/', ($node_b->safe_psql('restored',
		q{SELECT count(*) FROM app.sent WHERE model = 'acc' AND v >= 0 AND v % 10 = 0})) x 3),
	'one alert per round reading, before and after the restore');
is( $node_b->safe_psql('restored', q{
SELECT (SELECT count(*) FROM digitaltwin.dead_letters) || '/' ||
       (SELECT count(*) FROM digitaltwin.dead_letters WHERE error LIKE 'negative reading %') || '/' ||
       (SELECT count(*) FROM app.sent WHERE v < 0)}),
	join('/', ($node_b->safe_psql('restored', q{SELECT count(*) FROM app.sent WHERE v < 0})) x 3),
	'one dead letter per negative reading, none else');

# and after a restart the twins load again from the durable state
my $twins = $node_b->safe_psql('restored', $q{twins});
$node_b->restart;
DtTest::wait_workers($node_b, 'restored', 2) or die 'workers did not start';
is($node_b->safe_psql('restored', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'B idle after a restart');
is($node_b->safe_psql('restored', $q{twins}), $twins, 'the same twins after a restart');

# The ordering constraints are never checked: their triggers are disabled,
# and drop_model() of a model with queued events goes through.
is( $node_b->safe_psql('restored', q{
SELECT count(*) FILTER (WHERE t.tgenabled = 'D') || '/' || count(*)
FROM pg_trigger t JOIN pg_constraint c ON c.oid = t.tgconstraint
WHERE c.conname IN ('events_0_restore_order', 'events_1_restore_order', 'events_2_restore_order')}),
	'12/12', 'the restore-order foreign keys have all their triggers disabled');
$node_b->safe_psql('restored', q{
BEGIN;
SELECT digitaltwin.send('bin', 'gone', '{"v": 1}');
SELECT digitaltwin.drop_model('bin', force => true);
COMMIT;
SELECT digitaltwin.wait_idle('60s');
});
is($node_b->safe_psql('restored', q{SELECT count(*) FROM digitaltwin.dead_letters WHERE twin_id = 'gone'}),
	'1', 'drop_model with a queued event: the event is dead-lettered');

# the paused model resumes on B with its held events, in their order
is($node_b->safe_psql('restored', q{SELECT digitaltwin.resume_model('held')}), '30',
	'the restored paused model resumes with its 30 held events');
is($node_b->safe_psql('restored', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'B applied them');
is( $node_b->safe_psql('restored', q{
SELECT sum(event_count) FROM digitaltwin.twins WHERE model = 'held'}),
	'30', 'each held event applied once after the restore');

# the restored rules-based model goes on with its rules
$node_b->safe_psql('restored', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('ruled', 'r0', '{"i": 100}');
SELECT digitaltwin.wait_idle('60s')});
is($node_b->safe_psql('restored', q{SELECT state->>'even' FROM digitaltwin.twins WHERE model = 'ruled' AND twin_id = 'r0'}),
	'3', 'the restored rules-based model applies its rules');

# the restored right is enforced: the viewer reads that model only
is( $node_b->safe_psql('restored', q{
SET ROLE viewer;
SELECT string_agg(DISTINCT model, ',') FROM digitaltwin.twins}),
	'ruled', 'the restored per-model right is enforced');

# the restored typed view is still the model's: it goes with it
$node_b->safe_psql('restored', q{SELECT digitaltwin.drop_model('logged', force => true)});
is($node_b->safe_psql('restored', q{SELECT count(*) FROM pg_class WHERE relname = 'logged_view'}),
	'0', 'the restored typed view is dropped with its model');

$node_b->stop;
done_testing();
