# High availability of a node of a cluster: node n1 is a primary with a
# synchronous streaming standby, and the coordinator's server for n1 names
# both (libpq multi-host, target_session_attrs=read-write).  One coordinator
# session streams events with a sequence number per twin; n1's primary
# crashes while a commit of that session waits for its standby, and the
# standby is promoted (plain promotion).  Then: every event the sender knows
# committed is applied exactly once on the node that owns its twin, and no
# other (a model counts applications and checks the sequence); the
# sender's ambiguous commit is resolved by asking the node, not by blind
# resending; node n2 goes on taking events while n1 is down; the promoted
# node's workers rebuild its twins from the replicated durable state; the
# global views, cluster_exec() and cluster_wait_idle() reach the new
# primary through the same server, and so does, at its first query, a
# coordinator session that was connected to the old primary.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use List::Util qw(shuffle);
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my ($ret, $out, $err);
my $conf = "max_prepared_transactions = 10\nmax_connections = 30\n";
my $coord = DtTest::new_node('coord');
my $n1 = DtTest::new_node('n1', $conf, allows_streaming => 1);
my $n2 = DtTest::new_node('n2', $conf);
$_->start for ($coord, $n1, $n2);

DtTest::create_model($_) for ($n1, $n2);
$coord->safe_psql('postgres', 'CREATE EXTENSION digitaltwin');
DtTest::cluster_add_node($coord, @$_) for (['n1', $n1], ['n2', $n2]);
$coord->safe_psql('postgres', 'SELECT digitaltwin.cluster_setup(8)');

# The model of the stream: each event carries its twin's next sequence
# number; the state counts applications, keeps the last number and counts
# every event that was not the next one (a duplicate, a gap, a reorder).
$coord->safe_psql('postgres', q{
SELECT digitaltwin.cluster_exec($c$
CREATE FUNCTION seq(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $f$
DECLARE
    s int := (event->>'seq')::int;
    last int := coalesce((state->>'last')::int, 0);
BEGIN
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'last', s,
                              'bad', coalesce((state->>'bad')::int, 0) + (s <> last + 1)::int);
END $f$ $c$);
SELECT digitaltwin.cluster_create_model('seq', 'seq(text,jsonb,jsonb)');
});

# twins that the stream does not touch: after the failover they must be
# exactly as before
$coord->safe_psql('postgres', q{
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
SELECT 'acc', 'a' || (i % 2000), jsonb_build_object('v', i) FROM generate_series(1, 10000) i;
});
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('120s')}), 't',
	'the nodes processed the first events');

# n1's standby, synchronous: a commit on n1 returns only once the standby
# has it, so a promotion cannot lose an event the coordinator was told was
# committed.  The standby gets no synchronous_standby_names of its own
# (the primary's is set after the backup), or once promoted without a
# standby of its own every commit there would wait.
$n1->backup('b');
my $n1s = PostgreSQL::Test::Cluster->new('n1_standby');
$n1s->init_from_backup($n1, 'b', has_streaming => 1);
$n1s->start;
$n1->append_conf('postgresql.conf', "synchronous_standby_names = 'n1_standby'\n");
$n1->reload;
$n1->poll_query_until('postgres', q{
SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'n1_standby'})
  or die 'the standby did not become synchronous';
pass('n1 has a synchronous standby');

# The coordinator reaches n1 at whichever of its two servers is the
# primary: core PostgreSQL only (libpq multi-host conninfo).
$coord->safe_psql('postgres', sprintf(q{
ALTER SERVER digitaltwin_node_n1
    OPTIONS (SET host '%s,%s', SET port '%d,%d', ADD target_session_attrs 'read-write')},
	$n1->host, $n1s->host, $n1->port, $n1s->port));
is( $coord->safe_psql('postgres', q{
SELECT node || ':' || count(*) FROM digitaltwin.cluster_twins WHERE node = 'n1' GROUP BY node}),
	'n1:' . $n1->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.twin_state'),
	'postgres_fdw takes the multi-host server (n1 is read through it)');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_exec('CREATE TABLE before_failover (i int)')}), '2',
	'dblink takes it too (cluster_exec)');

my $acc_twins = q{
SELECT count(*) || '/' || md5(string_agg(twin_id || state::text || event_count, ',' ORDER BY twin_id))
FROM digitaltwin.cluster_twins WHERE model = 'acc' AND node = '%s'};
my %acc_before = map { ($_ => $coord->safe_psql('postgres', sprintf($acc_twins, $_))) } qw(n1 n2);
my $n2_workers = DtTest::worker_pids($n2);

# a coordinator session with a connection to n1's primary, idle through the
# failover
my $idle = $coord->background_psql('postgres');
my $n1_count = q{SELECT count(*) FROM digitaltwin.cluster_twins WHERE node = 'n1' AND model = 'acc'};
is($idle->query_safe($n1_count), (split m{/}, $acc_before{n1})[0],
	'a session reads n1 before the failover');

# ------------------------------------------------------------------
# The sender: one coordinator session (a psql kept open) streaming events
# of model 'seq' to twins q1..q200, one INSERT per node of ten twins, each
# event its twin's next sequence number, in BEGIN / INSERT / COMMIT.
#
# Which failures are safe to resend: postgres_fdw commits the remote
# transactions only in the coordinator's COMMIT, so a failed INSERT
# leaves nothing anywhere (its remote transactions roll back with it) and
# its events are simply sent again.  A failed COMMIT is ambiguous: the
# node may have committed (and, synchronous, its standby has it) before
# the answer was lost.  Those twins are set aside until the node answers
# again; then, after cluster_wait_idle(), the twin's last sequence number
# on its node says whether the event arrived (no later event of the twin
# was sent meanwhile).  So the sender knows exactly, for every twin, the
# last number committed, and every number before it.
# ------------------------------------------------------------------
my $status_file = $coord->basedir . '/sender.status';
my $stop_file = $coord->basedir . '/sender.stop';
my $result_file = $coord->basedir . '/sender.result';

sub sender
{
	my $timeout = $PostgreSQL::Test::Utils::timeout_default;
	my ($in, $sout, $serr) = ('', '', '');
	my $timer = IPC::Run::timeout($timeout);
	my $psql = IPC::Run::start(
		[ 'psql', '-X', '-q', '-A', '-t', '-d', $coord->connstr('postgres') ],
		'<', \$in, '>', \$sout, '2>', \$serr, $timer);
	# one command, ending with ';' (psql sends it then); (failed, output, error)
	my $run = sub {
		my ($sql) = @_;
		die "not a whole command: $sql" unless $sql =~ /;$/;
		($sout, $serr) = ('', '');
		$in .= "$sql\n\\echo \@\@done :ERROR\n";
		$timer->start($timeout);
		$psql->pump until $sout =~ /\@\@done (true|false)\n/;
		my $failed = $1 eq 'true';
		(my $res = $sout) =~ s/\@\@done (true|false)\n//;
		$psql->pump_nb;
		chomp $res;
		return ($failed, $res, $serr);
	};

	my $backend = ($run->('SELECT pg_backend_pid();'))[1];
	my %node_of = split /[|\n]/, ($run->(q{
SELECT 'q' || i, digitaltwin.cluster_node_of('q' || i) FROM generate_series(1, 200) i;}))[1];
	my %seq = map { ($_ => 0) } keys %node_of;
	my %pending;			# twin => the number of its ambiguous event
	my %st = map { ($_ => 0) } qw(n1_committed n2_committed n1_insert_failed
	  n2_insert_failed n1_commit_failed n2_commit_failed arrived resent
	  n2_after_n1_failed n1_after_failure);
	my $n1_down = 0;
	my $last_error = '';

	my $write_status = sub {
		open my $fh, '>', "$status_file.tmp" or die $!;
		print $fh map { "$_=$st{$_}\n" } sort keys %st;
		close $fh;
		rename "$status_file.tmp", $status_file or die $!;
	};

	until (-e $stop_file)
	{
		foreach my $node (shuffle qw(n1 n2))
		{
			my @twins = (shuffle grep { $node_of{$_} eq $node && !exists $pending{$_} } keys %node_of)[0 .. 9];
			@twins = grep { defined } @twins;
			next unless @twins;
			my $values = join ',',
			  map { sprintf(q{('seq', '%s', '{"seq": %d}')}, $_, $seq{$_} + 1) } @twins;
			$run->('BEGIN;');
			my ($failed, $res, $e) = $run->(
				"INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES $values;");
			if ($failed)
			{
				# nothing committed anywhere: these events go again later
				$run->('ROLLBACK;');
				$st{"${node}_insert_failed"}++;
			}
			else
			{
				($failed, $res, $e) = $run->('COMMIT;');
				if ($failed)
				{
					$st{"${node}_commit_failed"}++;
					$pending{$_} = $seq{$_} + 1 for @twins;
				}
				else
				{
					$seq{$_}++ for @twins;
					$st{"${node}_committed"} += @twins;
					$st{n2_after_n1_failed} += @twins if $node eq 'n2' && $n1_down;
					$st{n1_after_failure} += @twins if $node eq 'n1' && $n1_down;
				}
			}
			if ($failed)
			{
				$n1_down = 1 if $node eq 'n1';
				$last_error = $e;
			}
		}

		# the ambiguous events: ask their nodes, once they answer
		if (%pending)
		{
			my $list = join ',', map { "'$_'" } sort keys %pending;
			my ($failed, $idle) = $run->(q{SELECT digitaltwin.cluster_wait_idle('60s');});
			my $rows;
			($failed, $rows) = $run->(qq{
SELECT twin_id || '|' || (state->>'last') FROM digitaltwin.cluster_twins
WHERE model = 'seq' AND twin_id IN ($list);}) unless $failed || $idle ne 't';
			unless ($failed || $idle ne 't')
			{
				my %last = split /[|\n]/, $rows;
				foreach my $t (keys %pending)
				{
					my $last = $last{$t} // 0;
					if ($last == $pending{$t})
					{
						$seq{$t}++;
						$st{arrived}++;
						$st{"$node_of{$t}_committed"}++;
					}
					elsif ($last == $pending{$t} - 1)
					{
						$st{resent}++;	# not there: its number goes again
					}
					else
					{
						die "twin $t: last $last on its node, the sender sent $pending{$t}";
					}
				}
				%pending = ();
			}
			else
			{
				Time::HiRes::usleep(50_000);	# the node is not back yet
			}
		}
		$write_status->();
	}
	# the same session throughout: psql would have ended had it lost it
	die 'the sender\'s session changed' if ($run->('SELECT pg_backend_pid();'))[1] ne $backend;
	$in .= "\\q\n";
	$psql->finish;

	# what the sender knows committed, as SQL rows (twin, seq, node)
	open my $fh, '>', $result_file or die $!;
	print $fh join(",\n", map { "('$_', $seq{$_}, '$node_of{$_}')" } sort keys %seq);
	close $fh;
	chomp $last_error;
	print STDERR "# sender: last error: $last_error\n";
	return;
}

# the status the sender wrote last
sub sender_status
{
	return () unless -e $status_file;
	return map { split /=/ } split /\n/, slurp_file($status_file);
}

sub wait_sender
{
	my ($what, $cond) = @_;
	foreach my $i (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		my %st = sender_status();
		return 1 if %st && $cond->(\%st);
		die "the sender died" if waitpid($main::sender_pid, POSIX::WNOHANG()) != 0;
		Time::HiRes::usleep(100_000);
	}
	die "timed out waiting for the sender: $what";
}

our $sender_pid = fork();
die "fork: $!" unless defined $sender_pid;
if ($sender_pid == 0)
{
	# the child must not run the test's END blocks (they stop the nodes)
	my $ok = eval { sender(); 1 };
	print STDERR "# sender failed: $@" unless $ok;
	POSIX::_exit($ok ? 0 : 1);
}
END { kill 'TERM', $sender_pid if $sender_pid && kill(0, $sender_pid); }

wait_sender('events on n1', sub { $_[0]{n1_committed} >= 300 });
pass('the stream runs');

# Hold one of the sender's commits on n1 in flight: the standby stops
# replaying, and n1 waits for the standby to apply each commit.  The
# commit's record is on the standby (received and flushed) when the
# primary crashes, so the promoted node has it, while the sender only saw
# its COMMIT fail.
$n1s->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$n1->safe_psql('postgres', q{
ALTER SYSTEM SET synchronous_commit = remote_apply;
SELECT pg_reload_conf();
});
$n1->poll_query_until('postgres', q{
SELECT count(*) > 0 FROM pg_stat_activity
WHERE application_name = 'postgres_fdw' AND wait_event = 'SyncRep'})
  or die 'no commit of the sender waits for the standby';
my $flushed = $n1->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
$n1s->poll_query_until('postgres',
	"SELECT pg_last_wal_receive_lsn() >= '$flushed'::pg_lsn")
  or die 'the standby did not receive the commit';
my %at_crash = sender_status();

$n1->stop('immediate');

# n1 down, before the promotion: n2 goes on, and n1's twins fail clearly
wait_sender('n2 while n1 is down',
	sub { $_[0]{n1_commit_failed} >= 1 && $_[0]{n2_after_n1_failed} >= 50 });
pass('n2 takes events while n1 is down');
($ret, $out, $err) = $coord->psql('postgres', 'SELECT count(*) FROM digitaltwin.cluster_twins');
like($err, qr/digitaltwin_node_n1/,
	'a global view refuses to answer while n1 has no primary, naming it');
is($n1s->safe_psql('postgres', q{
SELECT coalesce((SELECT twins FROM digitaltwin.stats WHERE worker IS NULL), 0)}), '0',
	'the standby holds no twins in memory before its promotion');

my $log_offset = -s $n1s->logfile;
my $t0 = [Time::HiRes::gettimeofday];
$n1s->promote;
$n1s->poll_query_until('postgres', q{
SELECT count(*) = 2 FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = 'postgres'})
  or die 'no workers after the promotion';
$n1s->wait_for_log(qr/digitaltwin worker 1 loaded \d+ twins/, $log_offset);
$n1s->wait_for_log(qr/digitaltwin worker 0 loaded \d+ twins/, $log_offset);
note(sprintf('promotion to rebuilt twins: %.2f s', Time::HiRes::tv_interval($t0)));
pass('the promoted node\'s workers rebuilt its twins');

wait_sender('n1 events after the failover', sub { $_[0]{n1_after_failure} >= 300 });
pass('the sender\'s session reaches the new primary (its broken connection was replaced)');

# the idle session's connection died with the old primary: postgres_fdw
# finds it broken when the next transaction uses it, and connects again,
# to the primary of the two
is($idle->query_safe($n1_count), (split m{/}, $acc_before{n1})[0],
	'the session that was connected to the old primary reads the new one at once');
$idle->quit;

# the global views, cluster_exec and cluster_wait_idle with the new primary
is( $coord->safe_psql('postgres', q{
SELECT string_agg(node, ',' ORDER BY node)
FROM (SELECT DISTINCT node FROM digitaltwin.cluster_twins) x}),
	'n1,n2', 'the global views answer again');
is($coord->safe_psql('postgres', q{
SELECT digitaltwin.cluster_exec('CREATE TABLE after_failover (i int)')}), '2',
	'cluster_exec after the failover');
is($n1s->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname = 'after_failover'}),
	'1', '... reached the new primary');
is($n1s->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0',
	'... and left no prepared transaction there');

# the promoted node still refuses the twins of another node
my $theirs = $coord->safe_psql('postgres', q{
SELECT 'x' || i FROM generate_series(1, 1000) i
WHERE digitaltwin.cluster_node_of('x' || i) = 'n2' LIMIT 1});
($ret, $out, $err) = $n1s->psql('postgres', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('seq', '$theirs', '{"seq": 1}')});
like($err, qr/twin "$theirs" of model "seq" belongs to another node/,
	'the promoted node keeps its shard guard');

open my $stop, '>', $stop_file or die $!;
close $stop;
waitpid($sender_pid, 0);
is($? >> 8, 0, 'the sender ended cleanly');
my %st = sender_status();
note(join ' ', map { "$_=$st{$_}" } sort keys %st);
cmp_ok($st{n1_commit_failed}, '>=', 1, 'a commit of the sender was ambiguous');
cmp_ok($st{arrived}, '>=', 1, '... and its events on n1 were found there, not sent again');
is($st{n2_insert_failed} + $st{n2_commit_failed}, 0, 'no statement for n2 failed');
is($coord->safe_psql('postgres', q{SELECT digitaltwin.cluster_wait_idle('120s')}), 't',
	'cluster_wait_idle after the failover');

# every event the sender knows committed, applied once, on its node
$coord->safe_psql('postgres', 'CREATE TABLE expected (twin text, seq int, node text);
INSERT INTO expected VALUES ' . slurp_file($result_file));
is($coord->safe_psql('postgres', 'SELECT sum(seq) FROM expected'),
	$st{n1_committed} + $st{n2_committed}, 'the sender\'s record adds up');
is( $coord->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT * FROM expected WHERE seq > 0) e
FULL JOIN (SELECT node, twin_id, (state->>'n')::int AS n, (state->>'last')::int AS last,
                  (state->>'bad')::int AS bad
           FROM digitaltwin.cluster_twins WHERE model = 'seq') t ON t.twin_id = e.twin
WHERE t.n IS DISTINCT FROM e.seq OR t.last IS DISTINCT FROM e.seq OR t.bad <> 0
   OR t.node IS DISTINCT FROM e.node}),
	'0', 'every committed event applied exactly once, in order, on the node that owns its twin');
is( $coord->safe_psql('postgres', q{
SELECT sum(event_count) FROM digitaltwin.cluster_twins WHERE model = 'seq'}),
	$st{n1_committed} + $st{n2_committed}, 'and no other event');

# the twins the stream did not touch, and the nodes' memory
is($coord->safe_psql('postgres', sprintf($acc_twins, 'n1')), $acc_before{n1},
	'n1\'s other twins are as before the failover');
is($coord->safe_psql('postgres', sprintf($acc_twins, 'n2')), $acc_before{n2},
	'n2\'s too');
is( $n1s->safe_psql('postgres', q{
SELECT (SELECT twins FROM digitaltwin.stats WHERE worker IS NULL) = (SELECT count(*) FROM digitaltwin.twin_state)}),
	't', 'the promoted node holds all its twins in memory');
is(DtTest::worker_pids($n2), $n2_workers, 'n2\'s workers ran throughout');
is( join(',', map { $_->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.dead_letters') } ($n1s, $n2)),
	'0,0', 'no dead letters');

$_->stop for ($coord, $n1s, $n2);
done_testing();
