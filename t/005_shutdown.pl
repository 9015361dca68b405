# Fast and smart shutdowns while events stream: the workers abandon or finish
# their batch, and after a restart processing continues where it stopped,
# every committed event applied exactly once.
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

$node->stop;
done_testing();
