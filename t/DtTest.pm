# Helpers shared by the digitaltwin TAP tests.
#
# Every test streams events of model 'acc' and records each event in table
# "sent" IN THE SAME TRANSACTION, so that "sent" is exactly the set of
# committed events, whatever the client saw (a client that loses its
# connection in a crash does not know whether its COMMIT happened).
package DtTest;

use strict;
use warnings;

use Time::HiRes ();

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# A node with the extension preloaded (its launcher serves every database
# that has the extension, digitaltwin.workers workers each); extra lines of configuration (which
# override the defaults here) and arguments of init() may be given.
sub new_node
{
	my ($name, $extra, %init) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'digitaltwin'
digitaltwin.workers = 2
digitaltwin.poll_interval = '100ms'
digitaltwin.batch_size = 200
digitaltwin.allow_superuser_models = on
} . ($extra // ''));
	return $node;
}

# The accumulating model: count and sum of "v" per twin, an alert for every
# v divisible by 10; created with the extension and table "sent" in
# database $db (default postgres).
sub create_model
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres', q{
CREATE EXTENSION digitaltwin;
CREATE TABLE sent (id bigserial PRIMARY KEY, twin text NOT NULL, v int NOT NULL);
CREATE FUNCTION acc(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    IF v % 10 = 0 THEN
        PERFORM digitaltwin.alert('info', 'round value', event);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::bigint, 0) + 1,
                              'sum', coalesce((state->>'sum')::bigint, 0) + v);
END $$;
SELECT digitaltwin.create_model('acc', 'acc(text,jsonb,jsonb)');
});
	return;
}

# SQL sending $n events to random twins among $twins, recorded in "sent"
# by the same statement.
sub send_sql
{
	my ($n, $twins) = @_;
	return qq{
WITH e AS MATERIALIZED (
    SELECT 't' || (1 + (random() * ($twins - 1))::int) AS twin,
           (random() * 1000)::int AS v
    FROM generate_series(1, $n)),
s AS (INSERT INTO sent (twin, v) SELECT twin, v FROM e)
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'acc', twin, jsonb_build_object('v', v) FROM e;
};
}

# A pgbench script file streaming multi-row inserts; returns its path.
sub pgbench_script
{
	my ($node, $n, $twins) = @_;
	my $file = $node->basedir . '/stream.sql';
	my $sql = send_sql($n, $twins);
	$sql =~ s/\n/ /g;
	open my $fh, '>', $file or die "cannot write $file: $!";
	print $fh "$sql\n";
	close $fh;
	return $file;
}

# Start pgbench streaming the script of pgbench_script() with $clients
# clients for $seconds into database $db (default postgres); returns the
# IPC::Run handle.  Clients of a crashing server fail, which the tests
# expect.
sub start_pgbench
{
	my ($node, $script, $clients, $seconds, $db) = @_;
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-T', $seconds, '-f', $script,
			'-h', $node->host, '-p', $node->port, $db // 'postgres'
		],
		'>', \$out, '2>', \$err);
}

# Start a client that streams events by COPY for $seconds: a loop of psql
# runs, each COPYing the same 50 events into digitaltwin.events and into
# "sent" in one transaction.  Runs that fail (the server is crashing) are
# retried after a short pause.  Returns the IPC::Run handle.
sub start_copy_stream
{
	my ($node, $seconds, $twins) = @_;
	my $file = $node->basedir . '/copy.sql';
	my @rows = map { ['t' . (1 + int(rand($twins))), int(rand(1000))] } 1 .. 50;
	open my $fh, '>', $file or die "cannot write $file: $!";
	print $fh "BEGIN;\nCOPY digitaltwin.events (model, twin_id, payload) FROM stdin;\n";
	print $fh "acc\t$_->[0]\t{\"v\": $_->[1]}\n" for @rows;
	print $fh "\\.\nCOPY sent (twin, v) FROM stdin;\n";
	print $fh "$_->[0]\t$_->[1]\n" for @rows;
	print $fh "\\.\nCOMMIT;\n";
	close $fh;

	my $psql = join(' ', 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
		'-h', $node->host, '-p', $node->port, '-f', $file, 'postgres');
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[
			'bash', '-c',
			"end=\$((SECONDS + $seconds)); while [ \$SECONDS -lt \$end ]; do $psql || sleep 0.2; done"
		],
		'>', \$out, '2>', \$err);
}

# On coordinator $coord: register $node as node $name.
sub cluster_add_node
{
	my ($coord, $name, $node) = @_;
	$coord->safe_psql('postgres', sprintf(
		q{SELECT digitaltwin.cluster_add_node('%s', '%s', %d, 'postgres')},
		$name, $node->host, $node->port));
	return;
}

# A coordinator "coord" (extra configuration $coord_conf) and nodes named
# @$names, started, each with the model of create_model() and prepared
# transactions, registered and set up with $partitions partitions; returns
# ($coord, @nodes).
sub start_cluster
{
	my ($names, $partitions, $coord_conf) = @_;
	my $coord = new_node('coord', $coord_conf);
	my @nodes = map { new_node($_, "max_prepared_transactions = 10\n") } @$names;
	$_->start for ($coord, @nodes);
	create_model($_) for @nodes;
	$coord->safe_psql('postgres', 'CREATE EXTENSION digitaltwin');
	cluster_add_node($coord, $names->[$_], $nodes[$_]) for 0 .. $#nodes;
	$coord->safe_psql('postgres', "SELECT digitaltwin.cluster_setup($partitions)");
	return ($coord, @nodes);
}

# On a coordinator: how many twins of model acc whose id is LIKE $like
# differ from the events of table $table (twin, v) applied once each, read
# through digitaltwin.cluster_twins (every node).
sub cluster_mismatches
{
	my ($coord, $table, $like) = @_;
	return $coord->safe_psql('postgres', qq{
SELECT count(*)
FROM (SELECT twin, count(*) AS n, sum(v) AS s FROM $table GROUP BY twin) e
FULL JOIN (SELECT twin_id, (state->>'n')::bigint AS n, (state->>'sum')::bigint AS s
           FROM digitaltwin.cluster_twins WHERE model = 'acc' AND twin_id LIKE '$like') t
  ON t.twin_id = e.twin
WHERE e.n IS DISTINCT FROM t.n OR e.s IS DISTINCT FROM t.s});
}

# Every live twin of database $db (default postgres) as one string: id,
# state and event count, in id order; to compare the live view across a
# restart.
sub live_twins
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres', q{
SELECT string_agg(twin_id || '=' || state::text || '#' || event_count, ',' ORDER BY twin_id)
FROM digitaltwin.twins});
}

# Check that the live twins, the durable state and the alerts of database
# $db (default postgres) equal the effect of applying each committed event
# of its "sent" exactly once.
sub check_exactly_once
{
	my ($node, $what, $db) = @_;
	$db //= 'postgres';

	is($node->safe_psql($db, q{SELECT digitaltwin.wait_idle('120s')}),
		't', "$what: all committed events processed");

	my $sent = $node->safe_psql($db, 'SELECT count(*) FROM sent');
	cmp_ok($sent, '>', 0, "$what: some events were committed");

	is( $node->safe_psql($db, q{
SELECT count(*)
FROM (SELECT twin, count(*) AS n, sum(v) AS s FROM sent GROUP BY twin) e
FULL JOIN (SELECT twin_id, (state->>'n')::bigint AS n, (state->>'sum')::bigint AS s
           FROM digitaltwin.twins WHERE model = 'acc') t ON t.twin_id = e.twin
WHERE e.n IS DISTINCT FROM t.n OR e.s IS DISTINCT FROM t.s}),
		'0', "$what: every live twin equals its committed events applied once");

	is( $node->safe_psql($db, q{
SELECT count(*)
FROM (SELECT twin, count(*) AS n FROM sent GROUP BY twin) e
FULL JOIN (SELECT s.twin_id, s.event_count AS n FROM digitaltwin.twin_state s
           JOIN digitaltwin.models m ON m.id = s.model_id WHERE m.name = 'acc') d
    ON d.twin_id = e.twin
WHERE e.n IS DISTINCT FROM d.n}),
		'0', "$what: the durable state agrees");

	is( $node->safe_psql($db, q{
SELECT (SELECT count(*) FROM digitaltwin.alerts WHERE model = 'acc') || '/' ||
       (SELECT count(DISTINCT event_id) FROM digitaltwin.alerts WHERE model = 'acc') || '/' ||
       (SELECT count(*) FROM sent WHERE v % 10 = 0)}),
		join('/', ($node->safe_psql($db, 'SELECT count(*) FROM sent WHERE v % 10 = 0')) x 3),
		"$what: one alert per qualifying event, none twice");

	is($node->safe_psql($db, 'SELECT count(*) FROM digitaltwin.dead_letters'),
		'0', "$what: no dead letters");

	# the statistics commit with the batches: exact after any crash
	is( $node->safe_psql($db, q{
SELECT events_processed || '/' || alerts || '/' || dead_letters || '/' || events_in_flight
FROM digitaltwin.model_stats WHERE model = 'acc'}),
		join('/', $node->safe_psql($db, 'SELECT count(*) FROM sent'),
			$node->safe_psql($db, 'SELECT count(*) FROM sent WHERE v % 10 = 0'), 0, 0),
		"$what: model_stats counts each committed event and alert once");
	return;
}

# Wait until the workers have applied at least $n more events than now
# (the durable event counts of the twins).
sub wait_progress
{
	my ($node, $n) = @_;
	my $now = $node->safe_psql('postgres',
		'SELECT coalesce(sum(event_count), 0) FROM digitaltwin.twin_state');
	$node->poll_query_until('postgres',
		"SELECT coalesce(sum(event_count), 0) >= $now + $n FROM digitaltwin.twin_state")
	  or die 'workers made no progress';
	return;
}

# kill -9 the postmaster and wait until every process of the instance has
# exited (its children notice its death): only then may a new postmaster
# use the data directory.  True if they all exited in time.
sub kill9_and_wait
{
	my ($node) = @_;
	my @pids = split / /, $node->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ' ') FROM pg_stat_activity});
	push @pids, $node->{_pid};
	$node->kill9;
	foreach my $i (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		return 1 unless grep { kill(0, $_) } @pids;
		Time::HiRes::usleep(100_000);
	}
	return 0;
}

# PIDs of the digitaltwin workers of database $db (default postgres),
# sorted.
sub worker_pids
{
	my ($node, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql('postgres', qq{
SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = '$db'});
}

# Wait until exactly $n digitaltwin workers run in database $db (0: until
# none does); true if that happened in time.  Polls from database postgres.
sub wait_workers
{
	my ($node, $db, $n) = @_;
	return $node->poll_query_until('postgres', qq{
SELECT count(*) = $n FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = '$db'});
}

1;
