# The life of a model under load (version 1.8).
#
# 1. alter_model() while clients stream events: a jsonb model is switched
#    to a new function of the same state type, then to a composite state
#    (with a migration), then back to jsonb (with a migration).  Every
#    event is applied exactly once across the switches, to the state that
#    all earlier events of its twin made (whatever version applied them),
#    each worker batch runs wholly under one version, every batch of a
#    version commits before any batch of the next one starts, and each
#    migration converts every twin once, as the last batch of the former
#    version left it.
#
# 2. pause_model() across queue rotation, a clean restart and a kill -9 of
#    the postmaster: while another model goes on, the paused model's events
#    are moved to held_events and the queue partitions that held them are
#    truncated; its due timer waits; after resume_model() its events are
#    applied exactly once, each twin's in the order they were sent, ahead
#    of the events sent later.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('lifecycle', q{
digitaltwin.queue_rotation = '300ms'
restart_after_crash = on
});
$node->start;

sub q1
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Model 'acc' as DtTest's (count and sum of v, an alert per v divisible by
# 10), in four versions that each record, in table "applied", which version
# applied which event in which transaction (the worker's batch), and stamp
# their version in the state and in their alerts.  "sent" also records the
# id each event got in the queue.  Migrations record the state they
# converted in "migrated".
q1(q{
CREATE EXTENSION digitaltwin;
CREATE TABLE sent (id bigserial PRIMARY KEY, twin text NOT NULL, v int NOT NULL,
                   event_id bigint NOT NULL);
CREATE TABLE applied (seq bigserial PRIMARY KEY, event_id bigint NOT NULL,
                      twin text NOT NULL, ver int NOT NULL, xid xid8 NOT NULL,
                      n_before bigint NOT NULL);
CREATE TABLE migrated (twin text NOT NULL, to_ver int NOT NULL, old_n bigint,
                       old_ver int);
CREATE TYPE acc_state AS (n bigint, sum bigint, ver int);

CREATE FUNCTION acc_applied(ver int, n_before bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO applied (event_id, twin, ver, xid, n_before)
    SELECT (e).id, (e).twin_id, ver, pg_current_xact_id(), coalesce(n_before, 0)
    FROM (SELECT digitaltwin.current_event() AS e) c
$$;

CREATE FUNCTION acc_v1(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    PERFORM acc_applied(1, (state->>'n')::bigint);
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value v1', event);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::bigint, 0) + 1,
                              'sum', coalesce((state->>'sum')::bigint, 0) + v);
END $$;

CREATE FUNCTION acc_v2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    PERFORM acc_applied(2, (state->>'n')::bigint);
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value v2', event);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::bigint, 0) + 1,
                              'sum', coalesce((state->>'sum')::bigint, 0) + v,
                              'ver', 2);
END $$;

CREATE FUNCTION acc_v3(twin_id text, state acc_state, event jsonb) RETURNS acc_state
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    PERFORM acc_applied(3, state.n);
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value v3', event);
    END IF;
    RETURN ROW(coalesce(state.n, 0) + 1, coalesce(state.sum, 0) + v, 3)::acc_state;
END $$;

CREATE FUNCTION acc_v4(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    PERFORM acc_applied(4, (state->>'n')::bigint);
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value v4', event);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::bigint, 0) + 1,
                              'sum', coalesce((state->>'sum')::bigint, 0) + v,
                              'ver', 4);
END $$;

-- the migrations keep the version that last changed the state (1 when none
-- stamped it)
CREATE FUNCTION acc_to_composite(twin_id text, old jsonb) RETURNS acc_state
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO migrated VALUES (twin_id, 3, (old->>'n')::bigint,
                                 coalesce((old->>'ver')::int, 1));
    RETURN ROW((old->>'n')::bigint, (old->>'sum')::bigint,
               coalesce((old->>'ver')::int, 1))::acc_state;
END $$;

CREATE FUNCTION acc_to_jsonb(twin_id text, old acc_state) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO migrated VALUES (twin_id, 4, old.n, old.ver);
    RETURN jsonb_build_object('n', old.n, 'sum', old.sum, 'ver', old.ver);
END $$;

SELECT digitaltwin.create_model('acc', 'acc_v1(text,jsonb,jsonb)');
});

# 20 events to random twins among 200 per transaction, each recorded in
# "sent" with its queue id by the same statement
my $script = $node->basedir . '/acc_stream.sql';
open my $fh, '>', $script or die "cannot write $script: $!";
print $fh "WITH e AS MATERIALIZED (SELECT 't' || (1 + (random() * 199)::int) AS twin, "
  . "(random() * 1000)::int AS v FROM generate_series(1, 20)), "
  . "i AS (INSERT INTO digitaltwin.events (model, twin_id, payload) "
  . "SELECT 'acc', twin, jsonb_build_object('v', v) FROM e "
  . "RETURNING id, twin_id, (payload->>'v')::int AS v) "
  . "INSERT INTO sent (twin, v, event_id) SELECT twin_id, v, id FROM i;\n";
close $fh;

# Stop a stream, and wait until none of its sessions is left: a statement
# the server received before the client died still commits, and must do so
# before the checks wait for the queue to be idle.
sub stop_stream
{
	my ($h) = @_;
	$h->kill_kill;
	$node->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pgbench'})
	  or die 'pgbench sessions did not end';
	return;
}

# Wait until version $ver has applied at least $n events.
sub wait_applied
{
	my ($ver, $n) = @_;
	$node->poll_query_until('postgres',
		"SELECT count(*) >= $n FROM applied WHERE ver = $ver")
	  or die "version $ver did not apply $n events";
	return;
}

#
# 1. alter_model() while events stream
#
my $stream = DtTest::start_pgbench($node, $script, 3, 300);
wait_applied(1, 400);

is(q1(q{SELECT digitaltwin.alter_model('acc', 'acc_v2(text,jsonb,jsonb)')}),
	'2', 'switched to version 2 (same state type) while streaming');
wait_applied(2, 400);

is( q1(q{
SELECT digitaltwin.alter_model('acc', 'acc_v3(text,acc_state,jsonb)',
                               migrate => 'acc_to_composite(text,jsonb)')}),
	'3', 'switched to version 3 (composite state, migrated) while streaming');
# twins born under the composite version, from a NULL state
q1(q{
WITH i AS (INSERT INTO digitaltwin.events (model, twin_id, payload)
           SELECT 'acc', 'fresh' || g, jsonb_build_object('v', g * 10)
           FROM generate_series(1, 5) g
           RETURNING id, twin_id, (payload->>'v')::int AS v)
INSERT INTO sent (twin, v, event_id) SELECT twin_id, v, id FROM i});
wait_applied(3, 400);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 5 FROM applied WHERE twin LIKE 'fresh%'})
  or die 'the fresh twins were not applied';

is( q1(q{
SELECT digitaltwin.alter_model('acc', 'acc_v4(text,jsonb,jsonb)',
                               migrate => 'acc_to_jsonb(text,acc_state)')}),
	'4', 'switched to version 4 (back to jsonb, migrated) while streaming');
wait_applied(4, 400);
stop_stream($stream);

DtTest::check_exactly_once($node, 'across three switches');

is( q1(q{
SELECT count(*) FROM sent s FULL JOIN applied a ON a.event_id = s.event_id
WHERE a.event_id IS NULL OR s.event_id IS NULL OR a.twin <> s.twin}),
	'0', 'each committed event was applied, to its twin');
is(q1('SELECT count(*) - count(DISTINCT event_id) FROM applied'),
	'0', 'no event was applied twice, under one version or two');
# each call got the state that all earlier events of its twin made: none
# lost or mixed up by a switch or a migration
is( q1(q{
SELECT coalesce(string_agg(DISTINCT ver::text, ','), 'none') FROM (
    SELECT ver, n_before,
           row_number() OVER (PARTITION BY twin ORDER BY seq) - 1 AS earlier
    FROM applied) a
WHERE n_before <> earlier}),
	'none', 'each version got every twin\'s state as the events before had left it');
is(q1('SELECT count(*) FROM applied WHERE twin LIKE \'fresh%\' AND ver <> 3'),
	'0', 'the twins born under version 3 were applied by it');
is( q1(q{
SELECT count(*) FROM (SELECT xid FROM applied GROUP BY xid
                      HAVING count(DISTINCT ver) > 1) m}),
	'0', 'every worker batch ran under a single version');
is( q1(q{
SELECT string_agg(ver::text, ',' ORDER BY ver) FROM (
    SELECT ver, min(seq) AS first, max(seq) AS last,
           lag(max(seq)) OVER (ORDER BY ver) AS last_before
    FROM applied GROUP BY ver) v
WHERE last_before IS NULL OR last_before < first}),
	'1,2,3,4',
	'every version applied events, each only after the last of its predecessor');
is( q1(q{
SELECT count(*) FROM (
    SELECT twin, ver, lag(ver) OVER (PARTITION BY twin ORDER BY seq) AS before
    FROM applied) a
WHERE before > ver}),
	'0', 'no twin went back to an earlier version');
is( q1(q{
SELECT count(*) FROM digitaltwin.alerts
WHERE model = 'acc' AND message IS DISTINCT FROM 'round value v' || model_version}),
	'0', 'each alert records the version of the function that raised it');

# each migration converted every twin once, in the state the last batch
# of the version before left it (no batch ran during the migration)
foreach my $to (3, 4)
{
	is( q1(qq{
SELECT count(*)
FROM (SELECT twin, count(*) AS n, (array_agg(ver ORDER BY seq DESC))[1] AS ver
      FROM applied WHERE ver < $to GROUP BY twin) a
FULL JOIN (SELECT * FROM migrated WHERE to_ver = $to) m ON m.twin = a.twin
WHERE m.twin IS NULL OR a.twin IS NULL OR m.old_n <> a.n
   OR m.old_ver <> a.ver}),
		'0', "the migration to version $to converted every twin once, as last left");
}
is( q1(q{SELECT count(*) - count(DISTINCT (twin, to_ver)) FROM migrated}),
	'0', 'no twin was migrated twice');
is( q1(q{
SELECT count(*)
FROM (SELECT twin, (array_agg(ver ORDER BY seq DESC))[1] AS ver FROM applied GROUP BY twin) a
FULL JOIN (SELECT twin_id, (state->>'ver')::int AS ver FROM digitaltwin.twins
           WHERE model = 'acc') t ON t.twin_id = a.twin
WHERE t.ver IS DISTINCT FROM a.ver}),
	'0', 'every state was last made by the version that last applied an event to it');
is( q1(q{
SELECT version || ',' || state_version || ',' || state_type FROM digitaltwin.models
WHERE name = 'acc'}),
	'4,3,jsonb', 'the model is at version 4, its states at their third encoding');
is( q1(q{
SELECT string_agg(version || ':' || process::text || ':' || coalesce(migrate::text, '-'),
                  ' ' ORDER BY version)
FROM digitaltwin.model_versions WHERE model = 'acc'}),
	'1:acc_v1(text,jsonb,jsonb):- 2:acc_v2(text,jsonb,jsonb):- '
	  . '3:acc_v3(text,acc_state,jsonb):acc_to_composite(text,jsonb) '
	  . '4:acc_v4(text,jsonb,jsonb):acc_to_jsonb(text,acc_state)',
	'model_versions records every version with its migration');

#
# 2. pause_model() across queue rotation, a restart and a crash
#
# Model 'pz' keeps the sequence numbers of its events in the order it got
# them, and counts the fires of its timer.
q1(q{
CREATE SEQUENCE pzseq;
CREATE TABLE pz_sent (s bigint PRIMARY KEY, twin text NOT NULL, event_id bigint NOT NULL,
                      phase text NOT NULL);
CREATE FUNCTION pz(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    st jsonb := coalesce(state, '{"seen": [], "fired": 0}');
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        RETURN jsonb_set(st, '{fired}', to_jsonb((st->>'fired')::int + 1));
    END IF;
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer('ping', (event->>'arm')::interval);
    END IF;
    RETURN jsonb_set(st, '{seen}', (st->'seen') || (event->'s'));
END $$;
SELECT digitaltwin.create_model('pz', 'pz(text,jsonb,jsonb)');
});

# $n events to twins p0..p9, sequence numbers in the order of their queue
# ids, recorded in pz_sent by the same statement
sub send_pz
{
	my ($n, $phase) = @_;
	return qq{
WITH e AS MATERIALIZED (SELECT nextval('pzseq') AS s FROM generate_series(1, $n)),
i AS (INSERT INTO digitaltwin.events (model, twin_id, payload)
      SELECT 'pz', 'p' || s % 10, jsonb_build_object('s', s) FROM e ORDER BY s
      RETURNING id, twin_id, (payload->>'s')::bigint AS s)
INSERT INTO pz_sent SELECT s, twin_id, id, '$phase' FROM i;
};
}

# before the pause: every twin exists, p0 arms a timer due in 3 s
q1(send_pz(50, 'before'));
q1(q{
WITH i AS (INSERT INTO digitaltwin.events (model, twin_id, payload)
           VALUES ('pz', 'p0', jsonb_build_object('s', nextval('pzseq'), 'arm', '3 s'))
           RETURNING id, twin_id, (payload->>'s')::bigint AS s)
INSERT INTO pz_sent SELECT s, twin_id, id, 'before' FROM i;
SELECT digitaltwin.wait_idle('60s');
SELECT digitaltwin.pause_model('pz');
});
is( q1(q{
SELECT (SELECT count(*) FROM digitaltwin.timers WHERE model = 'pz') || ',' ||
       (SELECT state->>'fired' FROM digitaltwin.twins WHERE model = 'pz' AND twin_id = 'p0')}),
	'1,0', 'paused with the timer armed, not yet fired');
my $pz_states = q{
SELECT string_agg(twin_id || '=' || state::text, ' ' ORDER BY twin_id)
FROM digitaltwin.twins WHERE model = 'pz'};
my $paused_states = q1($pz_states);

# while 'acc' streams, send pz events in several transactions spread over
# successive queue generations
my $acc_applied = q1('SELECT count(*) FROM applied');
$stream = DtTest::start_pgbench($node, $script, 2, 300);
my $gen_first = q1('SELECT generation FROM digitaltwin.queue_state');
my $gen = $gen_first;
foreach my $round (1 .. 4)
{
	q1(send_pz(400, 'paused'));
	$gen = q1('SELECT generation FROM digitaltwin.queue_state');
	next if $round == 4;
	$node->poll_query_until('postgres',
		"SELECT generation > $gen FROM digitaltwin.queue_state")
	  or die 'the queue did not rotate';
}
cmp_ok($gen, '>', $gen_first, "the held events were queued in generations $gen_first to $gen");

# every partition that held them is truncated once generation $gen is
$node->poll_query_until('postgres',
	"SELECT drained_through >= $gen FROM digitaltwin.queue_state")
  or die 'the queue did not drain past the held events';
my $held_query = q{
SELECT count(*) || '/' || coalesce(sum(h.id), 0) || '/' ||
       count(*) FILTER (WHERE s.event_id IS NULL OR h.twin_id <> s.twin
                        OR (h.payload->>'s')::bigint <> s.s)
FROM digitaltwin.held_events h LEFT JOIN pz_sent s ON s.event_id = h.id};
my $expect_held = q1(q{
SELECT count(*) || '/' || sum(event_id) || '/0' FROM pz_sent WHERE phase = 'paused'});
is(q1($held_query), $expect_held, 'every event of the paused model is held, as sent');
is(q1(q{SELECT count(*) FROM digitaltwin.events WHERE model = 'pz'}),
	'0', 'none of them is left in the queue');
is(q1($pz_states), $paused_states, 'the paused model applied nothing');
cmp_ok(q1('SELECT count(*) FROM applied'), '>', $acc_applied + 1000,
	'the other model went on meanwhile');
stop_stream($stream);
$node->poll_query_until('postgres', q{
SELECT due_at < clock_timestamp() FROM digitaltwin.timers WHERE model = 'pz'})
  or die 'the timer did not fall due';
# a batch of p0's worker runs after the timer fell due
q1(q{
WITH i AS (INSERT INTO digitaltwin.events (model, twin_id, payload)
           VALUES ('acc', 'p0', '{"v": 1}') RETURNING id)
INSERT INTO sent (twin, v, event_id) SELECT 'p0', 1, id FROM i;
SELECT digitaltwin.wait_idle('60s');
});
is(q1(q{SELECT state->>'fired' FROM digitaltwin.twins WHERE model = 'pz' AND twin_id = 'p0'}),
	'0', 'the due timer of the paused model waits');

# a clean restart
$node->restart;
ok(DtTest::wait_workers($node, 'postgres', 2), 'workers are back after the restart');
is(q1(q{SELECT paused FROM digitaltwin.models WHERE name = 'pz'}),
	't', 'still paused after a restart');
is(q1($held_query), $expect_held, 'the held events are intact after a restart');
q1(send_pz(200, 'paused'));
q1(q{SELECT digitaltwin.wait_idle('60s')});
$expect_held = q1(q{
SELECT count(*) || '/' || sum(event_id) || '/0' FROM pz_sent WHERE phase = 'paused'});
is(q1($held_query), $expect_held, 'events sent after the restart are held too');
is(q1(q{SELECT count(*) FROM digitaltwin.events WHERE model = 'pz'}),
	'0', 'none of them is left in the queue');

# kill -9 of the postmaster
ok(DtTest::kill9_and_wait($node), 'all processes of the killed instance exited');
$node->start;
ok(DtTest::wait_workers($node, 'postgres', 2), 'workers are back after the crash');
q1(q{SELECT digitaltwin.wait_idle('60s')});
is(q1(q{SELECT paused FROM digitaltwin.models WHERE name = 'pz'}),
	't', 'still paused after a crash');
is(q1($held_query), $expect_held, 'the held events are intact after a crash');
is(q1($pz_states), $paused_states, 'the paused model still applied nothing');
is(q1(q{SELECT count(*) FROM digitaltwin.timers WHERE model = 'pz'}),
	'1', 'its timer still waits');

# resume, with events sent in the same transaction (after the held ones
# in queue order) and after it
my $nheld = q1(q{SELECT count(*) FROM digitaltwin.held_events});
my $resumed = q1(q{
BEGIN;
} . send_pz(100, 'after') . q{
SELECT digitaltwin.resume_model('pz');
COMMIT;
});
is($resumed, $nheld, "resume_model() put the $nheld held events back");
q1(send_pz(100, 'after'));
q1(q{SELECT digitaltwin.wait_idle('60s')});
$node->poll_query_until('postgres', q{
SELECT (state->>'fired')::int >= 1 FROM digitaltwin.twins WHERE model = 'pz' AND twin_id = 'p0'})
  or die 'the timer did not fire after the resume';

is( q1(q{SELECT count(*) FROM pz_sent p JOIN pz_sent q ON p.twin = q.twin
         AND p.s < q.s AND p.event_id > q.event_id}),
	'0', 'premise: each twin\'s events were queued in the order they were sent');
is( q1(q{
SELECT count(*)
FROM (SELECT twin, jsonb_agg(s ORDER BY s) AS seen FROM pz_sent GROUP BY twin) s
FULL JOIN (SELECT twin_id, state->'seen' AS seen FROM digitaltwin.twins
           WHERE model = 'pz') t ON t.twin_id = s.twin
WHERE s.seen IS DISTINCT FROM t.seen}),
	'0', 'after the resume every pz event was applied once, each twin\'s in the order sent');
is(q1(q{SELECT state->>'fired' FROM digitaltwin.twins WHERE model = 'pz' AND twin_id = 'p0'}),
	'1', 'the timer fired once after the resume');
is( q1(q{
SELECT (SELECT count(*) FROM digitaltwin.held_events) || ',' ||
       (SELECT count(*) FROM digitaltwin.dead_letters) || ',' ||
       (SELECT paused::int FROM digitaltwin.models WHERE name = 'pz')}),
	'0,0,0', 'nothing left held, nothing dead-lettered, the model runs');
DtTest::check_exactly_once($node, 'after the pause');

$node->stop;
done_testing();
