# Fast and smart shutdowns while events stream: the workers abandon or finish
# their batch, and after a restart processing continues where it stopped,
# every committed event applied exactly once.  A worker waiting in its
# back-off after failed batches answers SIGTERM at once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('shutdown');
$node->start;
DtTest::create_model($node);
my $script = DtTest::pgbench_script($node, 20, 200);

sub stream
{
	my ($seconds) = @_;
	return DtTest::start_pgbench($node, $script, 3, $seconds);
}

foreach my $mode ('fast', 'smart')
{
	my $h = stream(4);
	$node->poll_query_until('postgres',
		'SELECT count(*) > 0 FROM digitaltwin.twin_state WHERE event_count > 2')
	  or die 'no progress';
	# a smart shutdown waits for the pgbench clients to finish
	$node->stop($mode);
	$h->finish;
	ok(!$node->log_contains(qr/PANIC|server process .* was terminated by signal/),
		"$mode shutdown: no crash");
	$node->start;
	DtTest::check_exactly_once($node, "after a $mode shutdown");
}

# A batch that keeps failing (a constraint the workers' writes break) makes
# its worker back off, 1 s doubling to 30 s; the wait answers SIGTERM (it
# used to sleep through it, up to 30 s).
$node->safe_psql('postgres', q{
ALTER TABLE digitaltwin.twin_state ADD CONSTRAINT no_new_twins CHECK (event_count < 0) NOT VALID;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'acc', 'backoff' || i, '{"v": 1}' FROM generate_series(1, 20) i;
});
my $pid = $node->safe_psql('postgres', 'SELECT pid FROM digitaltwin.stats WHERE worker = 0');
# four failures: the next back-off is 8 s
$node->poll_query_until('postgres', qq{
SELECT count(*) >= 4 FROM regexp_matches(pg_read_file('} . $node->logfile . qq{'),
    '\\[$pid\\] ERROR:  new row for relation "twin_state" violates check constraint', 'g')})
  or die 'the worker did not fail its batches';
my $t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid")
  or die 'the worker did not exit';
cmp_ok(time() - $t0, '<', 5, 'a worker in its back-off exits at SIGTERM');
$node->safe_psql('postgres', q{
DELETE FROM digitaltwin.events WHERE twin_id LIKE 'backoff%';
ALTER TABLE digitaltwin.twin_state DROP CONSTRAINT no_new_twins;
});
DtTest::check_exactly_once($node, 'after the back-off');

$node->stop;
done_testing();
