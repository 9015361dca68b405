# The hostile review of version 1.11: what it found in
# cluster_move_partition(), cluster_relay() and cluster_ingest, each test
# stating the behaviour the design promises (each failed before the fixes):
# a drained node's guard, messages within a moving partition, the move's
# remote search_path and DateStyle, a failed move run again elsewhere, two
# moves at once, states holding OIDs, lock waits within the timeout, the
# relay's search_path after COMMIT, cluster_ingest re-entered while it
# sends.  A coordinator and three nodes on loopback; 8 partitions, spread
# n1, n2, n3, n1, n2, n3, n1, n2.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my ($ret, $out, $err);
my ($coord, @nodes) = DtTest::start_cluster([qw(n1 n2 n3)], 8, "restart_after_crash = on\n");
# models on every node: a one-shot timer, a forwarder (a message to
# another twin), and an enum state; n2 gets one more type first, so that
# its OIDs differ from the other nodes' (as on any real cluster)
$nodes[1]->safe_psql('postgres', q{CREATE TYPE shift_oids AS ENUM ('x')});
$coord->safe_psql('postgres', q{
SELECT digitaltwin.cluster_exec($x$
CREATE FUNCTION tm(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $f$
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        RETURN state || '{"fired": 1}';
    END IF;
    PERFORM digitaltwin.set_timer('once', (event->>'after')::interval);
    RETURN coalesce(state, '{}') || '{"armed": 1}';
END $f$;
CREATE FUNCTION fwd(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_sleep(0.01);
    PERFORM digitaltwin.send('acc', event->>'to', '{"v": 1}');
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $f$;
CREATE TYPE mood AS ENUM ('calm', 'angry');
CREATE FUNCTION em(twin_id text, state mood, event jsonb) RETURNS mood
LANGUAGE sql AS $f$ SELECT (event->>'m')::mood $f$$x$);
SELECT digitaltwin.cluster_create_model('tm', 'tm(text,jsonb,jsonb)');
SELECT digitaltwin.cluster_create_model('fwd', 'fwd(text,jsonb,jsonb)');
SELECT digitaltwin.cluster_create_model('em', 'em(text,mood,jsonb)');
});

# a twin id of partition $p (prefix $prefix)
my $twin_of = sub {
	my ($p, $prefix, $skip) = @_;
	$skip //= 0;
	return $coord->safe_psql('postgres', qq{
SELECT t FROM (SELECT '$prefix' || i AS t FROM generate_series(1, 10000) i) x
WHERE digitaltwin.cluster_partition_of(t, 8) = $p LIMIT 1 OFFSET $skip});
};
my $owners = sub {
	my ($p) = @_;
	return join(',', map { $_->name }
		  grep { $_->safe_psql('postgres',
				"SELECT count(*) FROM digitaltwin.cluster_shard WHERE remainder = $p") eq '1' } @nodes);
};
my $bg = sub {
	my ($node, $sql) = @_;
	my ($o, $e) = ('', '');
	return IPC::Run::start([ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$o, '2>', \$e, IPC::Run::timeout(180));
};

# 1. A node that gives up its last partition reads an empty cluster_shard
# as "not in a cluster" (shard_modulus 0): its guard lets every event in.
# n3 (partitions 2 and 5) is drained; the move of p5 fails at its end
# (step 5 waits for a reader of cluster_events past statement_timeout):
# the coordinator still routes p5 to n3, which the design says refuses it.
my $v5 = $twin_of->(5, 'v');
my $v0 = $twin_of->(0, 'v');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$v5', '{"v": 1}');
SELECT digitaltwin.cluster_wait_idle('60s');
SELECT digitaltwin.cluster_move_partition(2, 'n1');});
my $reader = $bg->($coord, 'BEGIN; SELECT count(*) FROM digitaltwin.cluster_events WHERE false; SELECT pg_sleep(8); COMMIT;');
$coord->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE relation = 'digitaltwin.cluster_events'::regclass AND mode = 'AccessShareLock' AND granted})
  or die 'no reader';
($ret, $out, $err) = $coord->psql('postgres',
	q{SET statement_timeout = '4s'; SELECT digitaltwin.cluster_move_partition(5, 'n2')});
like($err, qr/statement timeout/, 'the move of n3\'s last partition failed at step 5');
$reader->finish;
($ret, $out, $err) = $coord->psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$v5', '{"v": 100}')});
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')});
is($coord->safe_psql('postgres', qq{SELECT count(*) FROM digitaltwin.cluster_twins WHERE twin_id = '$v5'}),
	'1', '... the stale route to n3 is refused: the twin stays on one node');
($ret, $out, $err) = $nodes[2]->psql('postgres', qq{SELECT digitaltwin.send('acc', '$v0', '{"v": 1}')});
like($err, qr/belongs to another node/, 'a node that owns no partition refuses an event of another node\'s twin');
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(5, 'n2')});

# 2. Messages between twins of the moving partition, sent while the source
# drains its queue (step 2), are refused by the source's guard: their
# sending events are dead-lettered (the source keeps other partitions).  500 events of 10 ms each wait on the
# source (batches of 200): the move's step 1 comes between two batches.
my ($fa, $fb) = ($twin_of->(6, 'fa'), $twin_of->(6, 'fb'));
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'fwd', '$fa', '{"to": "$fb"}' FROM generate_series(1, 500)});
$coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(6, 'n2', '1s')});
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('60s')});
is($nodes[0]->safe_psql('postgres', qq{SELECT count(*) FROM digitaltwin.dead_letters WHERE twin_id = '$fa'}),
	'0', 'a move dead-letters no message between twins of the partition');
is($coord->safe_psql('postgres', qq{SELECT state->>'n' FROM digitaltwin.cluster_twins WHERE twin_id = '$fb'}),
	'500', '... each message applied once');

# 3. The move's SQL on a node runs with the node's search_path: a role of
# the node that may create in public gets the coordinator's superuser
# there (pg_catalog.unnest(anyarray) loses to an exact public.unnest(text[])).
$nodes[1]->safe_psql('postgres', q{
CREATE ROLE evil LOGIN;
GRANT CREATE ON SCHEMA public TO evil;
SET ROLE evil;
CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE evil SUPERUSER';
    END IF;
    RETURN QUERY SELECT x FROM pg_catalog.unnest(a) x;
END $$;
});
my $t0 = $twin_of->(0, 'a');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$t0', '{"v": 1}');
SELECT digitaltwin.cluster_wait_idle('60s');
SELECT digitaltwin.cluster_move_partition(0, 'n2');
});
is($nodes[1]->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'evil'}),
	'f', 'a move runs no function of a node\'s non-superuser');
$nodes[1]->safe_psql('postgres', q{
DROP FUNCTION public.unnest(text[]); ALTER ROLE evil NOSUPERUSER;
REVOKE CREATE ON SCHEMA public FROM evil; DROP ROLE evil;});

# 4. Timestamps travel as text in the coordinator session's DateStyle and
# are read back in the node's: with 'SQL, DMY', 3 February becomes 2 March.
my $t3 = $twin_of->(3, 'd');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'tm', '$t3', jsonb_build_object('after',
    make_timestamptz(extract(year FROM now())::int + 1, 2, 3, 10, 0, 0, 'UTC') - now());
SELECT digitaltwin.cluster_wait_idle('60s');
});
my $due = $nodes[0]->safe_psql('postgres', qq{SELECT due_at FROM digitaltwin.timers WHERE twin_id = '$t3'});
$coord->safe_psql('postgres', q{SET datestyle = 'SQL, DMY'; SELECT digitaltwin.cluster_move_partition(3, 'n3')});
is($nodes[2]->safe_psql('postgres', qq{SELECT due_at FROM digitaltwin.timers WHERE twin_id = '$t3'}),
	$due, 'a moved timer keeps its due time whatever the DateStyle of the session that moves it');

# 5. A move that failed after the target took the partition (step 4 fails
# on the source), then run again to another node: the map still names the
# source, so the target of the failed move keeps the partition too.
my $t4 = $twin_of->(4, 'f');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$t4', '{"v": 1}');
SELECT digitaltwin.cluster_wait_idle('60s')});
$nodes[1]->safe_psql('postgres', q{
CREATE FUNCTION fail_delete() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'injected'; END$$;
CREATE TRIGGER fail_delete BEFORE DELETE ON digitaltwin.twin_state FOR EACH STATEMENT EXECUTE FUNCTION fail_delete();});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(4, 'n1')});
like($err, qr/injected/, 'step 4 failed');
$nodes[1]->safe_psql('postgres', q{DROP TRIGGER fail_delete ON digitaltwin.twin_state});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(4, 'n3')});
like($err, qr/partition 4 is being moved to node n1/, 'a move elsewhere is refused until the failed one is finished');
is($owners->(4), 'n1', '... one node owns the partition');
$coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_move_partition(4, 'n1')});
is($coord->safe_psql('postgres', 'SELECT node FROM digitaltwin.cluster_partitions WHERE partition = 4'),
	'n1', 'run again, the failed move finishes');
is($coord->safe_psql('postgres', qq{SELECT count(*) FROM digitaltwin.cluster_twins WHERE twin_id = '$t4'}),
	'1', '... and its twin is on one node');

# 6. Two moves of one partition at once: the second read the map before the
# first committed, and moves from the node the first emptied.
my $t7 = $twin_of->(7, 'g');
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$t7', '{"v": 5}');
SELECT digitaltwin.cluster_wait_idle('60s')});
my $hold = $bg->($nodes[1], qq{BEGIN; SELECT digitaltwin.send('acc', '$t7', '{"v": 1}'); SELECT pg_sleep(6); COMMIT;});
$nodes[1]->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'BEGIN; SELECT digitaltwin.send%' AND state = 'active'})
  or die 'no holder';
my $first = $bg->($coord, q{SELECT digitaltwin.cluster_move_partition(7, 'n1', '60s')});
$coord->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE relation = 'digitaltwin.cluster_events'::regclass AND mode = 'AccessExclusiveLock' AND granted})
  or die 'the first move did not start';
my $second = $bg->($coord, q{SELECT digitaltwin.cluster_move_partition(7, 'n3', '2s')});
$_->finish for ($hold, $first, $second);
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('acc', '$t7', '{"v": 100}');
SELECT digitaltwin.cluster_wait_idle('60s')});
is($owners->(7), $coord->safe_psql('postgres', 'SELECT node FROM digitaltwin.cluster_partitions WHERE partition = 7'),
	'two moves of one partition at once: one owner, the one the map names');
is($coord->safe_psql('postgres', qq{SELECT string_agg(state::text, '|') FROM digitaltwin.cluster_twins WHERE twin_id = '$t7'}),
	'{"n": 3, "sum": 106}', '... and the twin keeps its events');

# 7. A state holds OIDs of the source (an enum here): moved as bytes, it is
# another node's OID on the target.
my $t5 = $twin_of->(5, 'e');   # (partition 5 is on n2 since test 1)
$coord->safe_psql('postgres', qq{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('em', '$t5', '{"m": "angry"}');
SELECT digitaltwin.cluster_wait_idle('60s');});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT digitaltwin.cluster_move_partition(5, 'n3')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/0A000: cannot move the twins of model em to another node/,
	'a state whose values hold OIDs of their node (an enum) is not moved');
($ret, $out, $err) = $nodes[1]->psql('postgres', qq{SELECT state FROM digitaltwin.twins WHERE twin_id = '$t5'});
is($out, '"angry"', '... and stays as it was, on its node');

# 8. The source's locks wait without bound: a client of the source with an
# open transaction that inserted an event holds the move (and with it the
# coordinator's inserts and the source's workers) past its timeout.
my $t1 = $twin_of->(1, 'h');
my $open = $bg->($nodes[1], qq{BEGIN; SELECT digitaltwin.send('acc', '$t1', '{"v": 1}'); SELECT pg_sleep(40); COMMIT;});
$nodes[1]->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'BEGIN; SELECT digitaltwin.send%' AND state = 'active'})
  or die 'no open transaction';
my $start = time;
$coord->psql('postgres', q{SET statement_timeout = '30s'; SELECT digitaltwin.cluster_move_partition(1, 'n3', '3s')});
cmp_ok(time - $start, '<', 15, 'a move with a 3 s timeout gives up within seconds');
$nodes[1]->safe_psql('postgres', q{
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; SELECT digitaltwin.send%'});
$open->finish;

# 9. cluster_relay() pins search_path only until its first COMMIT: the
# statements after it run with the caller's.
$coord->safe_psql('postgres', q{
CREATE SCHEMA s;
CREATE FUNCTION s.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'attacker function ran'; RETURN pg_catalog.clock_timestamp(); END $$;});
($ret, $out, $err) = $coord->psql('postgres',
	q{SET search_path = s, pg_catalog; CALL digitaltwin.cluster_relay('0.05 s')});
unlike($err, qr/attacker function ran/, 'the relay runs no function of the caller\'s search_path');

# 10. cluster_ingest re-entered while it sends (a trigger of the partition
# the rows go to inserts into the view): the buffer being sent is appended
# to, sent again and freed under the sender.
$coord->safe_psql('postgres', q{CREATE DATABASE ing});
$coord->safe_psql('ing', q{
CREATE EXTENSION digitaltwin;
CREATE TABLE ingest_local PARTITION OF digitaltwin.cluster_events FOR VALUES WITH (MODULUS 1, REMAINDER 0);
CREATE FUNCTION echo() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.model = 'm1' AND current_setting('x.done', true) IS DISTINCT FROM '1' THEN
        PERFORM set_config('x.done', '1', true);
        INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m2', 'echo', '{}');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER echo AFTER INSERT ON ingest_local FOR EACH ROW EXECUTE FUNCTION echo();});
$coord->psql('ing', q{INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m1', 'a', '{}')});
$coord->poll_query_until('postgres', 'SELECT true') or die 'the coordinator did not come back';
# (the lines of a crash, if any, are before this point)
unlike(slurp_file($coord->logfile), qr/terminated by signal/, 'no backend of the coordinator crashed');

$_->stop for ($coord, @nodes);
done_testing();
