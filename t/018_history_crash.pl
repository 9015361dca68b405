# The event log and the state history across kill -9: written in the
# batches' transactions, they hold each applied event exactly once and,
# for every twin, a last state equal to the twin's (twins_as_of() of now
# is the live view), whatever the crash interrupted.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('history_crash',
	"restart_after_crash = on\ndigitaltwin.log_partition_interval = '2s'\n");
$node->start;
DtTest::create_model($node);
$node->safe_psql('postgres', q{
SELECT digitaltwin.set_event_log('acc', '1 hour');
SELECT digitaltwin.set_history('acc', '1 hour');
});
my $script = DtTest::pgbench_script($node, 20, 200);

sub check_logs
{
	my ($when) = @_;
	ok($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}) eq 't',
		"$when: idle");
	DtTest::check_exactly_once($node, $when);
	# each committed event once in the log: the same multiset as "sent"
	is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
    (SELECT twin_id AS twin, (payload->>'v')::int AS v, count(*) FROM digitaltwin.event_log GROUP BY 1, 2
     EXCEPT ALL
     SELECT twin, v, count(*) FROM sent GROUP BY 1, 2)
    UNION ALL
    (SELECT twin, v, count(*) FROM sent GROUP BY 1, 2
     EXCEPT ALL
     SELECT twin_id, (payload->>'v')::int, count(*) FROM digitaltwin.event_log GROUP BY 1, 2)) d}),
		'0', "$when: the event log holds every committed event once");
	is($node->safe_psql('postgres', q{
SELECT count(*) = count(DISTINCT event_id) FROM digitaltwin.event_log}),
		't', "$when: no event logged twice");
	# the history's last state of each twin is the twin
	is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
    (SELECT twin_id, state, event_count FROM digitaltwin.twins_as_of(clock_timestamp())
     EXCEPT
     SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'acc')
    UNION ALL
    (SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'acc'
     EXCEPT
     SELECT twin_id, state, event_count FROM digitaltwin.twins_as_of(clock_timestamp()))) d}),
		'0', "$when: twins_as_of(now) is the live view");
	# and the history never goes back: event counts grow with time
	is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
    SELECT event_count < lag(event_count) OVER w AS back
    FROM digitaltwin.state_history WINDOW w AS (PARTITION BY twin_id ORDER BY valid_from)) h
WHERE back}),
		'0', "$when: each twin's history moves forward");
	return;
}

# kill -9 of a worker under load, then of the postmaster
my $stream = DtTest::start_pgbench($node, $script, 3, 6);
DtTest::wait_progress($node, 500);
my ($victim) = split /,/, DtTest::worker_pids($node);
ok(kill('KILL', $victim), "killed worker $victim with SIGKILL");
$stream->finish;
$node->poll_query_until('postgres', 'SELECT true')
  or die 'server did not come back';
check_logs('after kill -9 of a worker');

$stream = DtTest::start_pgbench($node, $script, 3, 6);
DtTest::wait_progress($node, 500);
ok(DtTest::kill9_and_wait($node), 'all processes of the killed instance exited');
$stream->finish;
$node->start;
check_logs('after kill -9 of the postmaster');

# the rows went to time partitions, which survived the crashes
cmp_ok($node->safe_psql('postgres',
		q{SELECT count(*) FROM digitaltwin.log_partitions}), '>=', 2,
	'time partitions were created');

$node->stop;
done_testing();
