# Crashes while clients stream events: kill -9 of a worker (the postmaster
# then resets every backend), kill -9 of the postmaster, and
# pg_terminate_backend of a worker.  After each, every twin equals applying
# each committed event exactly once, and each alert exists exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('crash', "restart_after_crash = on\n");
$node->start;
DtTest::create_model($node);
my $script = DtTest::pgbench_script($node, 20, 200);

# Stream with pgbench: 3 clients, each transaction a multi-row INSERT of 20
# events recorded in "sent" by the same statement.
sub start_stream
{
	my ($seconds) = @_;
	return DtTest::start_pgbench($node, $script, 3, $seconds);
}

# PIDs of every process of the instance, to wait for all of them to exit
# after the postmaster itself was killed.
# 1. kill -9 of one worker, under load (multi-row INSERTs and COPY)
my $stream = start_stream(6);
my $copy = DtTest::start_copy_stream($node, 6, 200);
DtTest::wait_progress($node, 500);

# While the workers run: a state is published in shared memory only after
# the commit that made it durable, so a twin read from the live view is
# never ahead of the durable state read just after it; and it is whole (its
# count agrees with its event count).
my $ahead = $node->safe_psql('postgres', q{
CREATE TEMP TABLE live AS
    SELECT twin_id, event_count, (state->>'n')::bigint AS n
    FROM digitaltwin.twins WHERE model = 'acc';
SELECT count(*) FILTER (WHERE l.event_count > s.event_count OR s.event_count IS NULL)
       || '/' || count(*) FILTER (WHERE l.n <> l.event_count)
FROM live l
LEFT JOIN digitaltwin.twin_state s ON s.twin_id = l.twin_id
    AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'acc');
});
is($ahead, '0/0', 'live twins are never ahead of the durable state, and whole');
my ($victim) = split /,/, DtTest::worker_pids($node);
ok(kill('KILL', $victim), "killed worker $victim with SIGKILL");
$stream->finish;
$copy->finish;
$node->poll_query_until('postgres', 'SELECT true')
  or die 'server did not come back';
ok($node->log_contains(qr/terminated by signal 9/), 'the postmaster saw the worker die');
DtTest::check_exactly_once($node, 'after kill -9 of a worker');

# 2. kill -9 of the postmaster, under load
$stream = start_stream(6);
$copy = DtTest::start_copy_stream($node, 6, 200);
DtTest::wait_progress($node, 500);
ok(DtTest::kill9_and_wait($node), 'all processes of the killed instance exited');
$stream->finish;
$copy->finish;
$node->start;
DtTest::check_exactly_once($node, 'after kill -9 of the postmaster');

# 3. pg_terminate_backend of a worker: it is restarted and resumes
my $before = DtTest::worker_pids($node);
my ($term) = split /,/, $before;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($term)");
$node->poll_query_until('postgres', qq{
SELECT count(*) = 2 AND bool_and(pid <> $term) FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker'})
  or die 'terminated worker did not come back';
$node->safe_psql('postgres', DtTest::send_sql(500, 200));
DtTest::check_exactly_once($node, 'after pg_terminate_backend of a worker');

# 4. a transaction that stays open while others commit, then commits; and
# one that rolls back
my $open = $node->background_psql('postgres');
$open->query_safe('BEGIN');
$open->query_safe(q{
INSERT INTO sent (twin, v) VALUES ('late', 1), ('late', 2);
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('acc', 'late', '{"v": 1}'), ('acc', 'late', '{"v": 2}')});
$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 'late', '{"v": 1000}');
ROLLBACK;
});
$node->safe_psql('postgres', DtTest::send_sql(300, 200));
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'later events processed while a transaction stays open');
$open->query_safe('COMMIT');
$open->quit;
DtTest::check_exactly_once($node, 'after a late commit and a rollback');
is($node->safe_psql('postgres',
		q{SELECT state FROM digitaltwin.twins WHERE twin_id = 'late'}),
	'{"n": 2, "sum": 3}', 'the late transaction applied, the rolled-back one did not');

$node->stop;
done_testing();
