# Messages between twins: a model's digitaltwin.send() commits with the
# sender's effects and is consumed exactly once by the receiving twin, so a
# chain car -> region -> country counts every car event once, across a
# kill -9 of the postmaster while events stream.  wait_idle() waits for
# messages transitively: one call returns only when the end of the chain
# has seen every event.  Each car event also leaves one command in the
# outbox, exactly once across the crash, and two gateways taking at once
# share none.  A chain longer than digitaltwin.max_message_depth
# ends in a dead letter, not in an endless loop.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('messages');
$node->start;

# A car's every event is a message to its region (in the event), with the
# region's country; a region counts the messages of each car and passes
# each one on to its country, which counts them by region.  "sent" records
# each car event in the transaction that queues it.
$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE TABLE sent (id bigserial PRIMARY KEY, car text NOT NULL, region text NOT NULL,
                   country text NOT NULL);
CREATE FUNCTION car(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('region', event->>'region',
                             jsonb_build_object('car', twin_id, 'country', event->>'country'));
    PERFORM digitaltwin.send_to_source(
        jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1));
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
CREATE FUNCTION region(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    cars jsonb := coalesce(state->'cars', '{}');
BEGIN
    PERFORM digitaltwin.send('country', event->>'country',
                             jsonb_build_object('region', twin_id));
    RETURN jsonb_build_object(
        'n', coalesce((state->>'n')::int, 0) + 1,
        'cars', cars || jsonb_build_object(event->>'car',
                                           coalesce((cars->>(event->>'car'))::int, 0) + 1));
END $$;
CREATE FUNCTION country(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    regions jsonb := coalesce(state->'regions', '{}');
BEGIN
    RETURN jsonb_build_object(
        'n', coalesce((state->>'n')::int, 0) + 1,
        'regions', regions || jsonb_build_object(event->>'region',
                                   coalesce((regions->>(event->>'region'))::int, 0) + 1));
END $$;
SELECT digitaltwin.create_model('car', 'car(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('region', 'region(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('country', 'country(text,jsonb,jsonb)');
});

# SQL queueing $n car events (200 cars, 10 regions, 3 countries), recorded
# in "sent" by the same statement.
sub send_sql
{
	my ($n) = @_;
	return qq{
WITH e AS MATERIALIZED (
    SELECT 'c' || (1 + (random() * 199)::int) AS car, (random() * 9)::int AS r
    FROM generate_series(1, $n)),
s AS (INSERT INTO sent (car, region, country) SELECT car, 'g' || r, 'k' || r % 3 FROM e)
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'car', car, jsonb_build_object('region', 'g' || r, 'country', 'k' || r % 3) FROM e;
};
}

# The countries' totals, and how many of "sent" they should be.
my $totals = q{
SELECT (SELECT coalesce(sum((state->>'n')::bigint), 0) FROM digitaltwin.twins
        WHERE model = 'country') || '/' || (SELECT count(*) FROM sent)};

# Check that every message of every car event was counted once at each hop.
sub check_counts
{
	my ($what) = @_;

	cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM sent'), '>', 0,
		"$what: some events were committed");
	is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT car, count(*) AS n FROM sent GROUP BY car) e
FULL JOIN (SELECT twin_id AS car, (state->>'n')::bigint AS n
           FROM digitaltwin.twins WHERE model = 'car') t USING (car)
WHERE e.n IS DISTINCT FROM t.n}),
		'0', "$what: each car counts its events once");
	is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT region, car, count(*) AS n FROM sent GROUP BY region, car) e
FULL JOIN (SELECT t.twin_id AS region, c.key AS car, c.value::bigint AS n
           FROM digitaltwin.twins t, jsonb_each_text(t.state->'cars') c
           WHERE t.model = 'region') r USING (region, car)
WHERE e.n IS DISTINCT FROM r.n}),
		'0', "$what: each region counts each car's messages once");
	is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT country, region, count(*) AS n FROM sent GROUP BY country, region) e
FULL JOIN (SELECT t.twin_id AS country, c.key AS region, c.value::bigint AS n
           FROM digitaltwin.twins t, jsonb_each_text(t.state->'regions') c
           WHERE t.model = 'country') k USING (country, region)
WHERE e.n IS DISTINCT FROM k.n}),
		'0', "$what: each country counts each region's messages once");
	is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT car, count(*) AS n FROM sent GROUP BY car) e
FULL JOIN (SELECT twin_id AS car, count(*) AS n, count(DISTINCT payload->>'n') AS distinct_n
           FROM digitaltwin.outbox GROUP BY twin_id) o USING (car)
WHERE e.n IS DISTINCT FROM o.n OR o.n IS DISTINCT FROM o.distinct_n}),
		'0', "$what: each car event left one command in the outbox");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.dead_letters'),
		'0', "$what: no dead letters");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.events'),
		'0', "$what: the queue is empty");
	return;
}

# 1. One wait_idle() call covers the whole chain: when it returns, the
# countries have seen every car event sent before the call (two hops).
# Sent, waited for and counted in one session, right after each other:
# the workers get no time to finish the chain after wait_idle returns.
is( $node->safe_psql('postgres',
		send_sql(3000) . q{SELECT digitaltwin.wait_idle('60s');} . $totals),
	"t\n3000/3000", 'after one wait_idle the countries have counted every car event');
check_counts('after one wait_idle');

# 2. kill -9 of the postmaster while two clients stream car events (200 a
# transaction, 40 transactions a second) and the chain carries them: once
# 4000 of them are committed, at a moment when the countries lag behind.
my $script = $node->basedir . '/cars.sql';
open my $fh, '>', $script or die "cannot write $script: $!";
my $sql = send_sql(200);
$sql =~ s/\n/ /g;
print $fh "$sql\n";
close $fh;
my ($out, $err) = ('', '');
my $stream = IPC::Run::start(
	[
		'pgbench', '-n', '-c', 2, '-t', 60, '-R', 40, '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres'
	],
	'>', \$out, '2>', \$err);
$node->poll_query_until('postgres', q{
SELECT count(*) >= 3000 + 4000 AND count(*) > (SELECT sum((state->>'n')::bigint)
                                               FROM digitaltwin.twins WHERE model = 'country')
FROM sent})
  or die 'the stream made no progress';
my $before = $node->safe_psql('postgres', $totals);
ok(DtTest::kill9_and_wait($node), 'all processes of the killed instance exited');
$stream->finish;
note("killed with $before car events counted by the countries");
$node->start;
# and more events after the restart, in several transactions
$node->safe_psql('postgres', send_sql(1000)) for 1 .. 5;
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'idle after the restart');
my $seen = $node->safe_psql('postgres', $totals);
like($seen, qr{^(\d+)/\1$}, "the countries have counted every car event ($seen)");
check_counts('after kill -9');

# Two gateways take the outbox at once, committing every 50 commands:
# together they take every command once.
$node->safe_psql('postgres', q{
CREATE TABLE taken (gateway text, id bigint);
CREATE PROCEDURE gateway(name text) LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        INSERT INTO taken SELECT name, id FROM digitaltwin.take_outbox(50);
        EXIT WHEN NOT FOUND;
        COMMIT;
    END LOOP;
END $$;
});
my @gateways = map {
	my ($o, $e) = ('', '');
	IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		  '-c', "CALL gateway('g$_')", 'postgres' ], '>', \$o, '2>', \$e);
} 1 .. 2;
$_->finish foreach @gateways;
is( $node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM taken) = (SELECT count(*) FROM sent)
   AND (SELECT count(DISTINCT id) FROM taken) = (SELECT count(*) FROM sent)
   AND (SELECT count(*) FROM digitaltwin.outbox WHERE taken_at IS NULL) = 0}),
	't', 'two gateways took every command once, none twice');

# 3. A chain longer than max_message_depth: a model that always sends on
# to the next twin.  The event 3 hops down the chain cannot send (54000):
# it is dead-lettered, and the chain ends there.
$node->safe_psql('postgres', q{
ALTER SYSTEM SET digitaltwin.max_message_depth = 3;
SELECT pg_reload_conf();
CREATE FUNCTION hop(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('hop', 'h' || ((event->>'n')::int + 1),
                             jsonb_build_object('n', (event->>'n')::int + 1));
    RETURN event;
END $$;
SELECT digitaltwin.create_model('hop', 'hop(text,jsonb,jsonb)');
});
$node->poll_query_until('postgres', 'SHOW digitaltwin.max_message_depth', '3')
  or die 'the setting was not reloaded';
$node->safe_psql('postgres', q{SELECT digitaltwin.send('hop', 'h0', '{"n": 0}')});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'wait_idle returns after a chain too long');
is( $node->safe_psql('postgres', q{
SELECT string_agg(twin_id, ',' ORDER BY twin_id) FROM digitaltwin.twins WHERE model = 'hop'}),
	'h0,h1,h2', 'the chain went 3 hops');
is( $node->safe_psql('postgres', q{
SELECT twin_id || ':' || sqlstate || ':' || (error LIKE '%chain of model "hop" is too long%')
FROM digitaltwin.dead_letters}),
	'h3:54000:true', 'the event that would go deeper is a dead letter');
is($node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.events'), '0',
	'nothing is left in the queue');

# two hops are within the limit: the cars still count
$node->safe_psql('postgres', 'DELETE FROM digitaltwin.dead_letters');
$node->safe_psql('postgres', send_sql(500));
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'idle with the lower limit');
$seen = $node->safe_psql('postgres', $totals);
like($seen, qr{^(\d+)/\1$}, "a chain of two hops is within the limit ($seen)");
check_counts('with max_message_depth = 3');

$node->stop;
done_testing();
