# Isolation of failure (issue 12, points 6, 7, 10 and 16): one event can
# only dead-letter itself.
#
#  - A model that catches query_canceled cannot outrun
#    digitaltwin.model_timeout: its event is dead-lettered (57014), once,
#    even across a worker restart, and every other event is processed.  A
#    model that catches the cancel once and returns a state is not applied.
#  - A timeout that fires while an expression runs without checking for
#    interrupts hits that event, not the next events of other models.
#  - Shared memory full (digitaltwin.max_memory): the events that need new
#    memory are dead-lettered (53200); the others go on; nothing is lost or
#    stuck.
#  - Anyone who can connect can NOTIFY digitaltwin_alerts: the shipped
#    listener (scripts/listen_alerts.c) counts only alerts it finds in
#    digitaltwin.alerts.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = DtTest::new_node('isolation', q{
digitaltwin.model_timeout = '1s'
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE ROLE modeler;
GRANT digitaltwin_admin TO modeler;
GRANT CREATE ON SCHEMA public TO modeler;
SET ROLE modeler;
-- counts its events; the events of the other models around the hostile ones
CREATE FUNCTION plain(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1)
$$;
-- catches the cancel of digitaltwin.model_timeout
CREATE FUNCTION stubborn(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'loop' THEN
        LOOP
            BEGIN
                PERFORM pg_sleep(0.1);
            EXCEPTION WHEN query_canceled THEN
                NULL;
            END;
        END LOOP;
    ELSIF event ? 'once' THEN
        BEGIN
            PERFORM pg_sleep(5);
        EXCEPTION WHEN query_canceled THEN
            NULL;
        END;
        RETURN jsonb_build_object('caught', true);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
-- parses a large JSON array: no check for interrupts until it returns
CREATE FUNCTION slow_n(n int) RETURNS int
LANGUAGE sql AS $$ SELECT jsonb_array_length(('[' || repeat('1,', n) || '1]')::jsonb) $$;
CREATE FUNCTION slow(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'len', CASE WHEN event ? 'slow' THEN slow_n((event->>'slow')::int) END)
$$;
SELECT digitaltwin.create_model('plain', 'plain(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('plain2', 'plain(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('stubborn', 'stubborn(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('slow', 'slow(text,jsonb,jsonb)');
});

# Delete the queued events of a twin and restart the workers: what 1.3
# needs to go on after a poison event (a no-op once it is handled).
sub unstick
{
	my ($twin) = @_;
	# stop the workers first: a worker's batch may hold the event's row
	$node->safe_psql('postgres', qq{
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker';
DELETE FROM digitaltwin.events WHERE twin_id = '$twin';
});
	$node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')});
	return;
}

# --- 6. a model that catches query_canceled in a loop --------------------------

# events of other twins and models before, with and after the poison event,
# in several transactions; twins p1..p8 cover both workers
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'plain', 'p' || i, '{}'::jsonb FROM generate_series(1, 8) i;
});
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'plain', 'p' || i, '{}'::jsonb FROM generate_series(1, 8) i
UNION ALL SELECT 'stubborn', 'poison', '{"loop": true}'::jsonb
UNION ALL SELECT 'stubborn', 's' || i, '{}'::jsonb FROM generate_series(1, 8) i
UNION ALL SELECT 'plain2', 'p' || i, '{}'::jsonb FROM generate_series(1, 8) i;
});
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'plain', 'p' || i, '{}'::jsonb FROM generate_series(1, 8) i;
});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}),
	't', 'a model that catches query_canceled: the queue drains');
is( $node->safe_psql('postgres', q{
SELECT count(*) || ' ' || min(sqlstate) || ' '
       || bool_and(error LIKE '%digitaltwin.model_timeout%')
FROM digitaltwin.dead_letters WHERE twin_id = 'poison'}),
	'1 57014 true',
	'... its event is dead-lettered once, for running longer than digitaltwin.model_timeout');
is( $node->safe_psql('postgres', q{
SELECT string_agg(model || ':' || n, ' ' ORDER BY model) FROM (
    SELECT model, sum(event_count) AS n FROM digitaltwin.twins
    WHERE model IN ('plain', 'plain2', 'stubborn') GROUP BY model) s}),
	'plain:24 plain2:8 stubborn:8',
	'... every other event, before, in and after its transaction, is applied');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.events}),
	'0', '... and none is left in the queue');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.dead_letters}),
	'1', '... and no other event is dead-lettered');
unstick('poison');
# a restart does not bring the poison event back
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.dead_letters WHERE twin_id = 'poison'}),
	'1', 'after a restart of the workers the poison event is still dead-lettered once');

# --- 6. a model that catches the cancel once and returns ----------------------

$node->safe_psql('postgres', q{
TRUNCATE digitaltwin.dead_letters;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('stubborn', 'once', '{}'),
    ('stubborn', 'once', '{"once": true}'),
    ('plain', 'p1', '{}');
});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}),
	't', 'a model that catches the cancel once and returns: the queue drains');
is( $node->safe_psql('postgres', q{
SELECT string_agg(twin_id || ' ' || sqlstate, ', ') FROM digitaltwin.dead_letters}),
	'once 57014', '... its event is dead-lettered (57014)');
is( $node->safe_psql('postgres', q{
SELECT state::text || ' ' || event_count FROM digitaltwin.twins WHERE twin_id = 'once'}),
	'{"n": 1} 1', '... and not applied');
unstick('once');

# --- 7. a timeout that fires while an expression ignores interrupts -----------

my $t0 = time();
$node->safe_psql('postgres', q{SELECT slow_n(4000000)});
my $elapsed = time() - $t0;
cmp_ok($elapsed, '>', 1.2, 'the slow expression takes longer than model_timeout here')
  or diag("slow_n(4000000) took $elapsed s");

$node->safe_psql('postgres', q{
TRUNCATE digitaltwin.dead_letters;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'plain', 'q' || i, '{}'::jsonb FROM generate_series(1, 8) i
UNION ALL SELECT 'slow', 'q' || i, '{"slow": 4000000}'::jsonb FROM generate_series(1, 2) i
UNION ALL SELECT 'plain2', 'q' || i, '{}'::jsonb FROM generate_series(1, 8) i
UNION ALL SELECT 'stubborn', 'q' || i, '{}'::jsonb FROM generate_series(1, 8) i;
});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('120s')}),
	't', 'slow expressions: the queue drains');
is( $node->safe_psql('postgres', q{
SELECT string_agg(model || ' ' || twin_id || ' ' || sqlstate, ', ' ORDER BY twin_id)
FROM digitaltwin.dead_letters}),
	'slow q1 57014, slow q2 57014',
	'... only the events that ran too long are dead-lettered (57014)');
is( $node->safe_psql('postgres', q{
SELECT string_agg(model || ':' || n, ' ' ORDER BY model) FROM (
    SELECT model, sum(event_count) AS n FROM digitaltwin.twins
    WHERE twin_id LIKE 'q%' GROUP BY model) s}),
	'plain:8 plain2:8 stubborn:8',
	'... the events after them, of other models, are applied; the slow ones are not');
unstick('q1');
unstick('q2');

# --- 16. forged notifications are not counted by the listener -----------------

SKIP:
{
	my $incdir = $node->config_data('--includedir');
	my $libdir = $node->config_data('--libdir');
	my $bin = $node->basedir . '/listen_alerts';
	my $src = "$FindBin::RealBin/../scripts/listen_alerts.c";
	skip 'no C compiler or libpq headers to build scripts/listen_alerts.c', 4
	  unless $incdir
	  && system('gcc', '-O0', '-o', $bin, $src, "-I$incdir", "-L$libdir", '-lpq') == 0;

	$node->safe_psql('postgres', q{
CREATE ROLE stranger LOGIN;     -- may connect, nothing else
CREATE ROLE watcher LOGIN;
GRANT digitaltwin_reader TO watcher;
SET ROLE modeler;
CREATE FUNCTION loud(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.alert(event->>'severity', event->>'message');
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('loud', 'loud(text,jsonb,jsonb)');
});
	my $conninfo = $node->connstr('postgres') . ' user=watcher';
	my ($out, $err) = ('', '');
	my $listener = IPC::Run::start([ $bin, $conninfo, '100' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	$listener->pump until $out =~ /listening on digitaltwin_alerts/;

	# two real alerts; then forgeries by a role that can only connect: an id
	# that does not exist, a real id with another severity and message, a
	# payload that is not JSON
	$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('loud', 'real', '{"severity": "warning", "message": "real one"}'),
    ('loud', 'real', '{"severity": "warning", "message": "real two"}');
SELECT digitaltwin.wait_idle('60s');
});
	my $real_id = $node->safe_psql('postgres',
		q{SELECT min(id) FROM digitaltwin.alerts WHERE model = 'loud'});
	$node->safe_psql('postgres', qq{
SELECT pg_notify('digitaltwin_alerts', '{"id": 999999, "model": "loud", "twin_id": "real", "severity": "critical", "message": "forged unknown id", "event_id": 1}');
SELECT pg_notify('digitaltwin_alerts', '{"id": $real_id, "model": "loud", "twin_id": "real", "severity": "critical", "message": "forged real id", "event_id": 1}');
SELECT pg_notify('digitaltwin_alerts', 'forged, not json');
}, extra_params => [ '-U', 'stranger' ]);
	$node->safe_psql('postgres', q{NOTIFY digitaltwin_demo_done});
	$listener->finish;

	like($out, qr/real one/, 'the listener prints a real alert');
	unlike($out, qr/forged/, '... and no forged one');
	unlike($out, qr/critical/, '... nor the severity a forger claimed for a real id');
	like($out, qr/\.\.\. 2 alerts received/,
		'... and counts only the alerts found in digitaltwin.alerts');
}

$node->stop;

# --- 10. shared memory exhausted ------------------------------------------------

my $small = DtTest::new_node('small', q{
digitaltwin.max_memory = '1MB'
});
$small->start;
$small->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE ROLE modeler;
GRANT digitaltwin_admin TO modeler;
GRANT CREATE ON SCHEMA public TO modeler;
SET ROLE modeler;
-- states of ~20 kB (incompressible enough: md5 of the twin and the count)
CREATE FUNCTION fat(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'pad', (SELECT string_agg(md5(twin_id || i || coalesce(state->>'n', '')), '')
                                      FROM generate_series(1, 625) i))
$$;
SELECT digitaltwin.create_model('keep', 'fat(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('grow', 'fat(text,jsonb,jsonb)');
});
# a few twins of 'keep' while there is room
$small->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'keep', 'k' || i, '{}' FROM generate_series(1, 6) i;
SELECT digitaltwin.wait_idle('60s');
});
is($small->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'keep'}),
	'6', 'memory: twins of one model fit');
# 'grow' asks for 100 x 20 kB, twice the limit, and 'keep' goes on with its
# twins, in the same transactions
$small->safe_psql('postgres', q{
CREATE TABLE sent (model text, twin text);
WITH e AS (SELECT 'grow' AS model, 'g' || i AS twin FROM generate_series(1, 100) i
           UNION ALL SELECT 'keep', 'k' || (1 + i % 6) FROM generate_series(1, 60) i),
s AS (INSERT INTO sent SELECT * FROM e)
INSERT INTO digitaltwin.events (model, twin_id, payload) SELECT model, twin, '{}' FROM e;
});
is($small->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}),
	't', 'memory full: the queue drains (no batch retried forever)');
is($small->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.events}),
	'0', '... nothing stays in the queue');
is( $small->safe_psql('postgres', q{
SELECT coalesce(string_agg(DISTINCT model || ' ' || sqlstate, ', '), 'none')
FROM digitaltwin.dead_letters}),
	'grow 53200',
	'... the events that need new memory are dead-lettered (53200), only those');
cmp_ok($small->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'grow'}),
	'<', 100, '... (the limit is reached: not every new twin fits)');
is( $small->safe_psql('postgres', q{SELECT sum(event_count) FROM digitaltwin.twins WHERE model = 'keep'}),
	'66', '... the events of existing twins of equal size keep being applied');
is( $small->safe_psql('postgres', q{
SELECT (SELECT coalesce(sum(event_count), 0) FROM digitaltwin.twins WHERE model = 'grow')
     + (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'grow')}),
	'100', '... and no event is lost: applied + dead-lettered = the 100 sent');
ok(!(slurp_file($small->logfile) =~ /terminated by signal|PANIC/),
	'no backend or worker crashed');
$small->stop;
done_testing();
