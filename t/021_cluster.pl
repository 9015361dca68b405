# Scale-out, first part: a coordinator and two nodes on loopback.  Events
# inserted into digitaltwin.cluster_events on the coordinator reach the
# node that owns their twin (PostgreSQL's hash partitioning, postgres_fdw
# foreign partitions); every twin lives on exactly one node, with each
# event applied once; a node refuses the events of twins it does not own;
# the global views read every node and aggregate on each; a node down gives
# a clear error for its twins only and the global views say so instead of
# returning part of the answer.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($ret, $out, $err);
my $coord = DtTest::new_node('coord');
my @nodes = map { DtTest::new_node($_, "max_prepared_transactions = 10\n") } qw(n1 n2);
$_->start for ($coord, @nodes);

# the same model on every node (cluster_create_model() is tested below)
DtTest::create_model($_) for @nodes;
# the coordinator starts at version 1.10 and is updated once its cluster
# runs (1.11 gives the registered nodes their queues for cluster_ingest)
$coord->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin VERSION '1.10';
CREATE TABLE sent (twin text NOT NULL, v int NOT NULL);
});

DtTest::cluster_add_node($coord, 'n' . ($_ + 1), $nodes[$_]) for 0 .. $#nodes;
# a node joins empty: one that has twins already is refused (they might
# belong to partitions another node will own)
my $n3 = DtTest::new_node('n3');
$n3->start;
DtTest::create_model($n3);
$n3->safe_psql('postgres', q{SELECT digitaltwin.send('acc', 'early', '{"v": 1}'); SELECT digitaltwin.wait_idle('30s')});
($ret, $out, $err) = $coord->psql('postgres', sprintf(
	q{SELECT digitaltwin.cluster_add_node('n3', '%s', %d, 'postgres')}, $n3->host, $n3->port));
like($err, qr/node n3 already has twins, events or timers/, 'a node with twins is refused');
is($coord->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.cluster_nodes'), '2',
	'... and not registered');
$n3->stop;

is($coord->safe_psql('postgres', 'SELECT digitaltwin.cluster_setup(8)'), '8',
	'cluster_setup made 8 partitions');
is( $coord->safe_psql('postgres', q{
SELECT string_agg(node || ':' || n, ',' ORDER BY node)
FROM (SELECT node, count(*) AS n FROM digitaltwin.cluster_partitions GROUP BY node) x}),
	'n1:4,n2:4', 'the partitions are spread over the nodes');
is($nodes[0]->safe_psql('postgres', 'SELECT name FROM digitaltwin.cluster_node_name'),
	'n1', 'a node knows its name');
is( $nodes[1]->safe_psql('postgres',
		'SELECT string_agg(remainder::text, \',\' ORDER BY remainder) FROM digitaltwin.cluster_shard'),
	'1,3,5,7', 'a node knows the partitions it owns');

# route 100k events: multi-row INSERTs through the coordinator
$coord->safe_psql('postgres', q{
INSERT INTO sent SELECT 't' || (i % 1000), i FROM generate_series(1, 100000) i;
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'acc', twin, jsonb_build_object('v', v) FROM sent;
});
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('180s')}), 't',
	'every node processed its events');

is( $coord->safe_psql('postgres', q{
SELECT count(*) || '/' || count(DISTINCT twin_id) FROM digitaltwin.cluster_twins WHERE model = 'acc'}),
	'1000/1000', 'every twin lives on exactly one node');
is(DtTest::cluster_mismatches($coord, 'sent', 't%'), '0', 'each twin equals its events applied once');
is( $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins t
JOIN digitaltwin.cluster_partitions p
  ON p.partition = digitaltwin.cluster_partition_of(t.twin_id, 8)
WHERE p.node <> t.node}),
	'0', 'each twin is on the node that owns its partition');
is( $coord->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.cluster_alerts WHERE model = 'acc') || '/' ||
       (SELECT count(*) FROM sent WHERE v % 10 = 0)}),
	'10000/10000', 'one alert per qualifying event, read through cluster_alerts');

$coord->safe_psql('postgres', 'ALTER EXTENSION digitaltwin UPDATE');
is( $coord->safe_psql('postgres', q{
SELECT string_agg(c.relname || ':' || (array_to_string(s.srvoptions, ' ') LIKE '%parallel_commit=true%')::text,
                  ',' ORDER BY c.relname)
FROM pg_foreign_table f JOIN pg_class c ON c.oid = f.ftrelid JOIN pg_foreign_server s ON s.oid = f.ftserver
WHERE c.relname LIKE 'queue\_%'}),
	'queue_n1:true,queue_n2:true', 'the update to 1.11 gave each node its queue, and parallel commits');

# COPY batched per node (1.11): through digitaltwin.cluster_ingest, each
# node takes the rows in a few multi-row statements, where a COPY into
# cluster_events sends one statement per row; every event applied once.
# A statement trigger on n1's queue counts the statements it receives.
$nodes[0]->safe_psql('postgres', q{
CREATE TABLE received (n int NOT NULL);
CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO public.received VALUES (1); RETURN NULL; END$$;
CREATE TRIGGER count_statement AFTER INSERT ON digitaltwin.events
FOR EACH STATEMENT EXECUTE FUNCTION count_statement();
});
my $copy_file = $coord->basedir . '/events.copy';
$coord->safe_psql('postgres', qq{
CREATE TABLE copied (twin text NOT NULL, v int NOT NULL);
INSERT INTO copied SELECT 'c' || (i % 500), i FROM generate_series(1, 30000) i;
COPY (SELECT 'acc', twin, jsonb_build_object('v', v) FROM copied) TO '$copy_file';
COPY digitaltwin.cluster_ingest (model, twin_id, payload) FROM '$copy_file';
});
my ($statements, $rows) = split /\|/, $nodes[0]->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM received) || '|' ||
       (SELECT count(*) FROM digitaltwin.events WHERE twin_id LIKE 'c%') +
       (SELECT coalesce(sum(event_count), 0) FROM digitaltwin.twins WHERE twin_id LIKE 'c%')});
cmp_ok($rows, '>', 10000, "node n1 received its share of the COPY ($rows rows)");
cmp_ok($statements, '<=', $rows / 50,
	"... in $statements statements: batched, not one per row");
$nodes[0]->safe_psql('postgres', 'TRUNCATE received');
$coord->safe_psql('postgres', qq{
COPY (SELECT 'acc', 'd' || i, jsonb_build_object('v', 0) FROM generate_series(1, 200) i) TO '$copy_file';
COPY digitaltwin.cluster_events (model, twin_id, payload) FROM '$copy_file';
});
is( $nodes[0]->safe_psql('postgres', q{SELECT count(*) FROM received}),
	$nodes[0]->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.events WHERE twin_id LIKE 'd%') +
       (SELECT coalesce(sum(event_count), 0) FROM digitaltwin.twins WHERE twin_id LIKE 'd%')}),
	'(a COPY into cluster_events itself reaches the node one statement per row)');
$nodes[0]->safe_psql('postgres', 'DROP TRIGGER count_statement ON digitaltwin.events');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('180s')}), 't',
	'the nodes processed the copied events');
is(DtTest::cluster_mismatches($coord, 'copied', 'c%'), '0',
	'each twin of the COPY equals its events applied once');
# a COPY that fails half-way leaves nothing on any node
($ret, $out, $err) = $coord->psql('postgres', qq{
COPY (SELECT 'acc', 'e' || i, CASE WHEN i = 25000 THEN NULL ELSE '{}' END, now()
      FROM generate_series(1, 25000) i) TO '$copy_file';
COPY digitaltwin.cluster_ingest FROM '$copy_file';
});
isnt($ret, 0, 'a COPY with a bad row at its end fails');
like($err, qr/payload/, '... with the node\'s error');
is( $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins WHERE twin_id LIKE 'e%'}),
	'0', '... and its rows sent before (two batches) are on no node');

# a row without a twin id among others: the statement fails, and none of
# its rows lands on any node
($ret, $out, $err) = $coord->psql('postgres', q{
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload)
VALUES ('acc', 'nullcase1', '{"v": 1}'), ('acc', NULL, '{"v": 1}'), ('acc', 'nullcase2', '{"v": 1}')});
isnt($ret, 0, 'a row without a twin id fails its statement into cluster_ingest');
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')});
is($coord->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.cluster_twins WHERE twin_id LIKE 'nullcase%'}),
	'0', '... and leaves nothing');

# aggregates run on each node (partitionwise aggregation, pushed down)
my $plan = $coord->safe_psql('postgres', q{
SET enable_partitionwise_aggregate = on;
EXPLAIN (VERBOSE, COSTS OFF)
SELECT node, count(*), sum(event_count) FROM digitaltwin.cluster_twins GROUP BY node});
like($plan, qr/Remote SQL: SELECT node, count\(\*\), sum\(event_count\)/,
	'the aggregate is computed on the nodes');
is( $coord->safe_psql('postgres', q{
SET enable_partitionwise_aggregate = on;
SELECT sum(s) FROM (SELECT node, sum(event_count) AS s FROM digitaltwin.cluster_twins GROUP BY node) x}),
	'130200', 'the global aggregate equals the events sent');

is( $coord->safe_psql('postgres', q{
SELECT sum(events_processed) || '/' || count(*) FROM digitaltwin.cluster_model_stats WHERE model = 'acc'}),
	'130200/2', 'cluster_model_stats: each node\'s counts, which add up to the events sent');
is( $coord->safe_psql('postgres', q{
SELECT string_agg(node, ',' ORDER BY node) FROM digitaltwin.cluster_stats WHERE worker IS NULL}),
	'n1,n2', 'cluster_stats: each node\'s workers');

# a lookup by twin id asks one node only
my $lookup = $coord->safe_psql('postgres', q{
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT state FROM digitaltwin.cluster_twins
WHERE twin_id = 't42' AND node = digitaltwin.cluster_node_of('t42')});
like($lookup, qr/Subplans Removed: 1/, 'a lookup by twin id reads one node');
is( $coord->safe_psql('postgres', q{
SELECT state->>'n' FROM digitaltwin.cluster_twins
WHERE twin_id = 't42' AND node = digitaltwin.cluster_node_of('t42')}),
	'100', '... and finds the twin');

# the same statements on every node, all or nothing
is( $coord->safe_psql('postgres', q{
SELECT digitaltwin.cluster_exec($$
CREATE FUNCTION acc2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT event'$$)}), '2', 'cluster_exec ran on both nodes');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_create_model('acc2', 'acc2(text,jsonb,jsonb)')}),
	'2', 'cluster_create_model registered the model on both nodes');
is(join(',', map { $_->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.models WHERE name = 'acc2'}) } @nodes),
	'1,1', '... and both have it');
$nodes[1]->safe_psql('postgres', 'CREATE TABLE clash (i int)');
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_exec('CREATE TABLE clash (i int)')});
isnt($ret, 0, 'a statement that fails on one node fails cluster_exec');
like($err, qr/node n2: relation "clash" already exists/, '... with that node\'s error, naming it');
is($nodes[0]->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'clash'}),
	'0', '... and the node where it succeeded keeps nothing');
is(join(',', map { $_->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts') } @nodes),
	'0,0', '... and no prepared transaction is left');

# the guard: a node refuses a twin it does not own, takes one it owns
my ($theirs, $ours) = split /\|/, $coord->safe_psql('postgres', q{
SELECT (SELECT 'x' || i FROM generate_series(1, 1000) i
        WHERE digitaltwin.cluster_partition_of('x' || i, 8) % 2 = 1 LIMIT 1) || '|' ||
       (SELECT 'x' || i FROM generate_series(1, 1000) i
        WHERE digitaltwin.cluster_partition_of('x' || i, 8) % 2 = 0 LIMIT 1)});
($ret, $out, $err) = $nodes[0]->psql('postgres', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', '$theirs', '{"v": 1}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'node n1 refuses a twin of n2');
like($err, qr/23514: twin "$theirs" of model "acc" belongs to another node/,
	'... with a clear error');
$nodes[0]->safe_psql('postgres', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', '$ours', '{"v": 1}')});
pass('node n1 takes a twin it owns');

# one listener for every node (1.11): cluster_relay() forwards each
# node's alerts to the coordinator's channel, with the node's name
my ($rin, $rout, $rerr) = ('', '', '');
my $relay = IPC::Run::start(
	[ 'psql', '-X', '-d', $coord->connstr('postgres'), '-c', q{CALL digitaltwin.cluster_relay('60s')} ],
	'<', \$rin, '>', \$rout, '2>', \$rerr);
for my $n (@nodes)
{
	$n->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'LISTEN digitaltwin_outbox'})
	  or die 'the relay does not listen on the node';
}
my ($lin, $lout, $lerr) = ("LISTEN digitaltwin_alerts;\n", '', '');
my $listener = IPC::Run::start([ 'psql', '-X', '-d', $coord->connstr('postgres') ],
	'<', \$lin, '>', \$lout, '2>', \$lerr, IPC::Run::timeout(120));
$listener->pump while length $lin;
$coord->safe_psql('postgres', q{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'acc', 'relay' || i, jsonb_build_object('v', 10 * i) FROM generate_series(1, 20) i;
SELECT digitaltwin.cluster_wait_idle('60s');
});
my @heard;
for (1 .. 600)
{
	$lin .= "SELECT 'ping';\n";
	$listener->pump while length $lin;
	$listener->pump until $lout =~ /ping/;
	@heard = $lout =~ /notification "digitaltwin_alerts" with payload "(.*?)" received/g;
	last if @heard >= 20;
	$lout =~ s/ping//g;
	select(undef, undef, undef, 0.1);
}
$lin .= "\\q\n";
$listener->finish;
is(scalar(@heard), 20, 'the listener on the coordinator heard the twenty alerts of both nodes');
my $pairs = join(',', map { /"id": (\d+).*"node": "(n\d)"/ ? "('$2',$1)" : "('?',0)" } @heard);
is( $coord->safe_psql('postgres', qq{
SELECT count(*) || '/' || count(DISTINCT a.node) FROM (VALUES $pairs) h(node, id)
JOIN digitaltwin.cluster_alerts a ON a.node = h.node AND a.id = h.id AND a.twin_id LIKE 'relay%'}),
	'20/2', '... each one an alert of the node it names');
$coord->safe_psql('postgres', q{
SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL digitaltwin.cluster_relay%'});
$relay->finish;

# a node down: its twins' events fail with an error naming it; the others
# go on; the global views refuse rather than answer in part
my $on_n1 = $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins WHERE node = 'n1' AND model = 'acc'});
$nodes[1]->stop;
($ret, $out, $err) = $coord->psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$theirs', '{"v": 1}')});
isnt($ret, 0, 'an event for a twin of the stopped node fails');
like($err, qr/digitaltwin_node_n2/, '... naming the node');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$ours', '{"v": 2}')});
pass('an event for a twin of the running node goes through');
($ret, $out, $err) = $coord->psql('postgres', 'SELECT count(*) FROM digitaltwin.cluster_twins');
isnt($ret, 0, 'the global view refuses to answer without a node');
like($err, qr/digitaltwin_node_n2/, '... and names it');
is( $coord->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.cluster_twins WHERE node = 'n1' AND model = 'acc'}),
	$on_n1, 'the running node can still be read alone (partition pruning)');

($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('5s')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/08001: node n2: could not establish connection/, 'cluster_wait_idle names the node it cannot reach');
$nodes[1]->start;
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')}), 't',
	'the cluster is idle again once the node is back');

# a coordinator is not dropped by accident: its foreign partitions would go
($ret, $out, $err) = $coord->psql('postgres', 'DROP EXTENSION digitaltwin');
like($err, qr/cannot drop extension digitaltwin because it is the coordinator of a cluster/,
	'DROP EXTENSION without CASCADE is refused on a coordinator');

# the coordinator survives pg_dump and pg_restore into a new instance: its
# nodes, map, servers, queues and foreign partitions, and it routes and
# reads as before
my $dump = $coord->basedir . '/coordinator.dump';
$coord->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $coord->connstr('postgres') ],
	'pg_dump of the coordinator');
my $coord2 = DtTest::new_node('coord2');
$coord2->start;
$coord2->command_ok([ 'pg_restore', '--exit-on-error', '-d', $coord2->connstr('postgres'), $dump ],
	'pg_restore into a new instance');
my $map_sql = q{SELECT string_agg(partition || ':' || node, ',' ORDER BY partition) FROM digitaltwin.cluster_partitions};
is($coord2->safe_psql('postgres', $map_sql), $coord->safe_psql('postgres', $map_sql),
	'the restored coordinator has the same map');
$coord->stop;
my $t42 = $coord2->safe_psql('postgres', q{
SELECT state->>'n' FROM digitaltwin.cluster_twins WHERE twin_id = 't42'});
$coord2->safe_psql('postgres', q{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', 't42', '{"v": 1}');
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('acc', 't42', '{"v": 1}');
SELECT digitaltwin.cluster_wait_idle('60s');
});
is($coord2->safe_psql('postgres', q{
SELECT state->>'n' FROM digitaltwin.cluster_twins WHERE twin_id = 't42' AND node = digitaltwin.cluster_node_of('t42')}),
	$t42 + 2, 'and routes (cluster_events, cluster_ingest) and reads as the old one');

$_->stop for ($coord2, @nodes);
done_testing();
