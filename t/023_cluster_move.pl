# Growing a cluster: cluster_move_partition() moves a hash partition's
# twins, their pending timers and their held events to another node while
# events stream through the coordinator; nothing is lost or applied
# twice, every twin stays on exactly one node, the timers fire once, on
# their new node.  A move that cannot be done leaves the partition where
# it was, still served.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my ($ret, $out, $err);
my ($coord, @nodes) = DtTest::start_cluster([qw(n1 n2)], 8);
$coord->safe_psql('postgres',
	'CREATE TABLE sent (id bigserial PRIMARY KEY, twin text NOT NULL, v int NOT NULL)');

# a model with a one-shot timer, and a copy of acc to pause on n1 only
$coord->safe_psql('postgres', q{
SELECT digitaltwin.cluster_exec($x$
CREATE FUNCTION tm(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $f$
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        PERFORM digitaltwin.alert('info', 'fired', event);
        RETURN state || jsonb_build_object('fired', coalesce((state->>'fired')::int, 0) + 1);
    END IF;
    PERFORM digitaltwin.set_timer('once', (event->>'after')::interval);
    RETURN coalesce(state, '{}') || jsonb_build_object('armed', coalesce((state->>'armed')::int, 0) + 1);
END $f$$x$);
SELECT digitaltwin.cluster_create_model('tm', 'tm(text,jsonb,jsonb)');
SELECT digitaltwin.cluster_create_model('held', 'acc(text,jsonb,jsonb)');
});

# twins of partition 0 (owned by n1) and of partition 2 (n1 too)
my $twins_of = sub {
	my ($p, $n, $prefix) = @_;
	return $coord->safe_psql('postgres', qq{
SELECT string_agg(quote_literal(t), ',') FROM (
    SELECT '$prefix' || i AS t FROM generate_series(1, 10000) i
    WHERE digitaltwin.cluster_partition_of('$prefix' || i, 8) = $p LIMIT $n) x});
};
is($coord->safe_psql('postgres', 'SELECT node FROM digitaltwin.cluster_partitions WHERE partition = 0'),
	'n1', 'partition 0 starts on n1');

# pending timers in partition 0, due after the move
my $timer_twins = $twins_of->(0, 20, 'tm');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'tm', t, '{"after": "12s"}' FROM unnest(ARRAY[$timer_twins]) t;
SELECT digitaltwin.cluster_wait_idle('60s');
});
is($nodes[0]->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.timers WHERE model = 'tm'}),
	'20', 'twenty timers pending on n1');

# held events: model "held" paused on n1 only, five events of a twin of
# partition 2 held there
my ($held_twin) = $twins_of->(2, 1, 'h') =~ /'(.*)'/;
$nodes[0]->safe_psql('postgres', q{SELECT digitaltwin.pause_model('held')});
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'held', '$held_twin', jsonb_build_object('v', i) FROM generate_series(1, 5) i;
});
$nodes[0]->poll_query_until('postgres', q{SELECT count(*) = 5 FROM digitaltwin.held_events})
  or die 'the events were not held';

# stream events through the coordinator (pgbench, 2 clients), and move
# partition 0 to n2 while they flow
my $script = $coord->basedir . '/stream.sql';
open my $fh, '>', $script or die;
print $fh q{WITH e AS MATERIALIZED (SELECT 't' || (1 + (random() * 999)::int) AS twin, (random() * 1000)::int AS v FROM generate_series(1, 20)), s AS (INSERT INTO sent (twin, v) SELECT twin, v FROM e) INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) SELECT 'acc', twin, jsonb_build_object('v', v) FROM e;}, "\n";
close $fh;
my $stream = DtTest::start_pgbench($coord, $script, 2, 8);
$coord->poll_query_until('postgres', 'SELECT count(*) > 2000 FROM sent')
  or die 'the stream did not start';
my $t0 = time;
my $moved = $coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(0, 'n2')});
my $pause = time - $t0;
cmp_ok($moved, '>=', 20, "partition 0 moved with its twins ($moved)");
diag(sprintf('the move took %.0f ms while events streamed', $pause * 1000));
$stream->finish;
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('120s')}), 't',
	'every node processed its events');

is($coord->safe_psql('postgres', 'SELECT node FROM digitaltwin.cluster_partitions WHERE partition = 0'),
	'n2', 'partition 0 is on n2');
is( join('|', map { $_->safe_psql('postgres',
	'SELECT string_agg(remainder::text, \',\' ORDER BY remainder) FROM digitaltwin.cluster_shard') } @nodes),
	'2,4,6|0,1,3,5,7', 'each node knows what it owns now');
is( $coord->safe_psql('postgres', q{
SELECT count(*) || '/' || count(DISTINCT (model, twin_id)) FROM digitaltwin.cluster_twins}),
	$coord->safe_psql('postgres', q{
SELECT count(*) || '/' || count(*) FROM digitaltwin.cluster_twins}),
	'every twin is on exactly one node');
is( $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins t
JOIN digitaltwin.cluster_partitions p ON p.partition = digitaltwin.cluster_partition_of(t.twin_id, 8)
WHERE p.node <> t.node}),
	'0', 'each twin is on the node that owns its partition');
is(DtTest::cluster_mismatches($coord, 'sent', 't%'), '0',
	'each twin equals its events applied once, across the move');
is( $coord->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.cluster_alerts WHERE model = 'acc') || '/' ||
       (SELECT count(*) FROM sent WHERE v % 10 = 0)}),
	$coord->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM sent WHERE v % 10 = 0) || '/' || (SELECT count(*) FROM sent WHERE v % 10 = 0)}),
	'one alert per qualifying event');

# the timers moved with their twins and fire once, on n2
is($nodes[1]->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.timers WHERE model = 'tm'})
	 + $nodes[1]->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'tm' AND state ? 'fired'}),
	'20', 'the timers are on n2');
is($nodes[0]->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.timer_state}),
	'0', '... and no longer on n1');
$nodes[1]->poll_query_until('postgres', q{
SELECT count(*) = 20 FROM digitaltwin.twins WHERE model = 'tm' AND state ? 'fired'})
  or die 'the moved timers did not fire';
is( $coord->safe_psql('postgres', q{
SELECT string_agg(DISTINCT node || ':' || (state->>'armed') || ':' || (state->>'fired'), ',')
FROM digitaltwin.cluster_twins WHERE model = 'tm'}),
	'n2:1:1', 'each moved timer fired exactly once, on n2');
is($coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_alerts WHERE model = 'tm' AND node = 'n2'}),
	'20', '... with one alert each, on n2');

# held events follow their twin's partition: n2 does not pause "held", so
# they join its queue
cmp_ok($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(2, 'n2')}),
	'>', 0, 'partition 2 moved (the held twin has no state yet)');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')}), 't', 'idle');
is($nodes[1]->safe_psql('postgres', qq{
SELECT state->>'n' || '/' || (state->>'sum') FROM digitaltwin.twins WHERE model = 'held' AND twin_id = '$held_twin'}),
	'5/15', 'the held events were applied once on n2');
is($nodes[0]->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.held_events}),
	'0', '... and are no longer held on n1');

# a move that cannot be done: n2 lacks a model of the partition's twins;
# n1 keeps the partition and goes on serving it
$nodes[0]->safe_psql('postgres', q{SELECT digitaltwin.create_model('only1', 'acc(text,jsonb,jsonb)')});
my ($only_twin) = $twins_of->(4, 1, 'o') =~ /'(.*)'/;
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('only1', '$only_twin', '{"v": 1}')});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(4, 'n2')});
like($err, qr/node n2 has no model only1/, 'a move to a node without the model is refused');
is($coord->safe_psql('postgres', 'SELECT node FROM digitaltwin.cluster_partitions WHERE partition = 4'),
	'n1', '... partition 4 stays on n1');
is($nodes[0]->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.cluster_shard WHERE remainder = 4'),
	'1', '... which owns it again');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('only1', '$only_twin', '{"v": 2}')});
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')});
is($nodes[0]->safe_psql('postgres', qq{SELECT state->>'sum' FROM digitaltwin.twins WHERE twin_id = '$only_twin'}),
	'3', '... and serves it');

# growing: a node added to the running cluster owns nothing (and refuses
# every event) until a partition is moved to it
my $n3 = DtTest::new_node('n3', "max_prepared_transactions = 10\n");
$n3->start;
DtTest::create_model($n3);
DtTest::cluster_add_node($coord, 'n3', $n3);
($ret, $out, $err) = $n3->psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 't1', '{"v": 1}')});
like($err, qr/owns no partition yet/, 'a node added to a running cluster refuses events until it owns a partition');
my $before = $coord->safe_psql('postgres', 'SELECT count(*) FROM sent');
my $stream2 = DtTest::start_pgbench($coord, $script, 2, 5);
$coord->poll_query_until('postgres', "SELECT count(*) > $before + 500 FROM sent")
  or die 'the second stream did not start';
cmp_ok($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(6, 'n3')}),
	'>', 0, 'partition 6 moved to the new node while events stream');
$stream2->finish;
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('120s')}), 't', 'idle');
is($n3->safe_psql('postgres', 'SELECT string_agg(remainder::text, \',\') FROM digitaltwin.cluster_shard'),
	'6', 'n3 owns partition 6');
is( $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins t
JOIN digitaltwin.cluster_partitions p ON p.partition = digitaltwin.cluster_partition_of(t.twin_id, 8)
WHERE p.node <> t.node OR (p.partition = 6) <> (t.node = 'n3')}),
	'0', 'the twins of partition 6, and only they, are on n3');
is(DtTest::cluster_mismatches($coord, 'sent', 't%'), '0',
	'each twin equals its events applied once, across both moves');

($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(99, 'n2')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22023: partition 99 does not exist/, 'an unknown partition is refused');
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(1, 'n9')});
like($err, qr/node 'n9' is not registered/, 'an unknown node is refused');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(0, 'n2')}),
	'0', 'moving a partition to its own node does nothing');

$_->stop for ($coord, @nodes, $n3);
done_testing();
