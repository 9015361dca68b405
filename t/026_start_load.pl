# The load at start (src/rebuild.c): after a restart one worker loads every
# partition and the others take theirs from it.
#  - After a restart, one worker logs that it loaded every partition, the
#    other that its twins were loaded for it; the live twins equal those
#    before the restart and processing goes on exactly once.
#  - A loader that fails does not leave the others waiting: each then loads
#    its own partition (and reports its own failure); once the cause is
#    repaired, every committed event is applied exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('start_load');
$node->start;
DtTest::create_model($node);
# a model with a composite state, whose durable rows the load checks
$node->safe_psql('postgres', q{
CREATE TYPE pt_state AS (n int);
CREATE FUNCTION pt(twin_id text, state pt_state, event jsonb) RETURNS pt_state
LANGUAGE sql AS $$ SELECT ROW(coalesce(state.n, 0) + 1)::pt_state $$;
SELECT digitaltwin.create_model('pt', 'pt(text,pt_state,jsonb)');
});
$node->safe_psql('postgres', DtTest::send_sql(3000, 200));
DtTest::check_exactly_once($node, 'before restart');

my $before = DtTest::live_twins($node);
my $twins = $node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.twins');

# --- 1. the load at start ----------------------------------------------------

my $offset = -s $node->logfile;
$node->restart;
$node->wait_for_log(qr/It loaded every partition at start: \d+ more twins/, $offset);
$node->wait_for_log(qr/Its twins were loaded at start by another worker/, $offset);
my $log = slurp_file($node->logfile, $offset);
my @loads = ($log =~ /digitaltwin worker (\d) loaded (\d+) twins/g);
is(scalar(@loads), 4, 'each of the two workers logged its load once');
my %per_worker = @loads;
is($per_worker{0} + $per_worker{1}, $twins,
	'the two partitions together hold every twin');
is($node->safe_psql('postgres', q{SELECT sum(twins) FROM digitaltwin.worker_stats()}),
	$twins, 'each worker counts the twins of its own partition');
is(DtTest::live_twins($node), $before,
	'live twins after the load at start equal those before');
$node->safe_psql('postgres', DtTest::send_sql(2000, 250));
DtTest::check_exactly_once($node, 'after the load at start');

# --- 2. a loader that fails ---------------------------------------------------

# One durable row no load can read in each partition (a composite state
# too short to be a row): whichever worker loads every partition fails on
# one of them, and so does the other worker's own load afterwards.
my @bad = map {
	$node->safe_psql('postgres', qq{
SELECT 'bad' || i FROM generate_series(1, 1000) i
WHERE digitaltwin.partition_of('bad' || i, 2) = $_ LIMIT 1})
} (0, 1);
$node->safe_psql('postgres', qq{
INSERT INTO digitaltwin.twin_state (model_id, twin_id, state, event_count, updated_at)
SELECT id, b, '\\x0102'::bytea, 1, now()
FROM digitaltwin.models, unnest(ARRAY['$bad[0]', '$bad[1]']) b WHERE name = 'pt'});
$node->restart;
# events committed while no partition can be loaded: kept, not lost
$node->safe_psql('postgres', DtTest::send_sql(500, 250));
ok( $node->poll_query_until('postgres', q{
SELECT count(*) = 2 FROM digitaltwin.worker_stats()
WHERE last_error LIKE '%is not a row of type public.pt_state%'}),
	'after the loader failed, the other worker loaded its own partition and failed too');
is($node->safe_psql('postgres', q{SELECT count(*) > 0 FROM digitaltwin.events}),
	't', 'the events wait in the queue');

# the repair reloads both partitions; nothing was lost or applied twice
$node->safe_psql('postgres', q{
DELETE FROM digitaltwin.twin_state WHERE twin_id LIKE 'bad%'});
DtTest::check_exactly_once($node, 'after the repair');

$node->stop;
done_testing();
