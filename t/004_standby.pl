# Hot standby and promotion: on a standby the launcher and the workers stay
# idle and the live view answers from the replicated durable state, in each
# database, to a role that is only a
# member of digitaltwin_reader as to a superuser (the view reads twin_state
# as the extension's owner, the reader has no rights on it); after a
# failover under load, the promoted node's workers rebuild and continue,
# and every replicated committed event is applied exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = DtTest::new_node('primary', '', allows_streaming => 1);
$primary->start;
DtTest::create_model($primary);
$primary->safe_psql('postgres', q{
CREATE ROLE analyst LOGIN;
GRANT digitaltwin_reader TO analyst;
});
$primary->safe_psql('postgres', DtTest::send_sql(2000, 100));
is($primary->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'primary processed the first events');
# a second database with the extension, served by the same launcher
$primary->safe_psql('postgres', 'CREATE DATABASE other');
DtTest::create_model($primary, 'other');
$primary->safe_psql('other', DtTest::send_sql(300, 20));
is($primary->safe_psql('other', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'primary processed the events of the second database');

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;
$primary->safe_psql('postgres', DtTest::send_sql(1000, 150));
is($primary->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'primary processed more events');
$primary->wait_for_catchup($standby);

# On the standby: no worker, a live view from the replicated state, and a
# clear refusal to queue events.
is($standby->safe_psql('postgres', q{
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker'}),
	'0', 'no digitaltwin worker runs on the standby');
my $view = q{
SELECT string_agg(twin_id || '=' || state::text || '#' || event_count, ',' ORDER BY twin_id)
FROM digitaltwin.twins};
is($standby->safe_psql('postgres', $view), $primary->safe_psql('postgres', $view),
	'the standby shows the same twins as the primary');
is($standby->safe_psql('other', $view), $primary->safe_psql('other', $view),
	'... in the second database too');
is($standby->safe_psql('postgres', q{
SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'digitaltwin%'}),
	'0', 'no launcher, no worker, no probe on the standby');
# a lookup by twin id reads the replicated state too
my $some = $primary->safe_psql('postgres', q{SELECT min(twin_id) FROM digitaltwin.twin_state});
my $one = qq{SELECT state::text || '#' || event_count FROM digitaltwin.twins WHERE twin_id = '$some'};
like($primary->safe_psql('postgres', $one), qr/#\d+$/, "twin $some is live on the primary");
is($standby->safe_psql('postgres', $one), $primary->safe_psql('postgres', $one),
	'a lookup by twin id on the standby finds the same state');

# A reader sees the same rows on the standby and on the primary, by a full
# pass and by a lookup, though twin_state itself is closed to it.
my @analyst = (extra_params => [ '-U', 'analyst' ]);
my $rows = $primary->safe_psql('postgres', $view);
like($rows, qr/^t\d+=\{.*#\d+(,t\d+=\{.*#\d+)+$/, 'the twins as a superuser sees them');
is($standby->safe_psql('postgres', $view, @analyst), $rows,
	'a reader on the standby sees the same twins');
is($primary->safe_psql('postgres', $view, @analyst), $rows,
	'a reader on the primary sees the same twins');
is($standby->safe_psql('postgres', $one, @analyst),
	$primary->safe_psql('postgres', $one),
	'a reader on the standby finds a twin by its id');
my ($ret, $out, $err) = $standby->psql('postgres',
	'SELECT count(*) FROM digitaltwin.twin_state', @analyst);
like($err, qr/permission denied for table twin_state/,
	'the reader cannot read twin_state itself');

($ret, $out, $err) = $standby->psql('postgres',
	q{SELECT digitaltwin.send('acc', 't1', '{"v": 1}')});
like($err, qr/cannot execute INSERT in a read-only transaction/,
	'sending on the standby is refused');

# Failover under load: stream, crash the primary, promote the standby.
my $script = DtTest::pgbench_script($primary, 20, 150);
my $stream = DtTest::start_pgbench($primary, $script, 3, 5);
my $before = $primary->safe_psql('postgres', 'SELECT count(*) FROM sent');
$primary->poll_query_until('postgres',
	"SELECT count(*) > $before + 200 FROM sent")
  or die 'stream did not start';
$primary->kill9;
$stream->finish;

$standby->promote;
$standby->poll_query_until('postgres', q{
SELECT count(*) = 2 FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = 'postgres'})
  or die 'workers did not start after promotion';
cmp_ok($standby->safe_psql('postgres', 'SELECT count(*) FROM sent'), '>=', $before,
	'the promoted node has the events replicated before the stream');
DtTest::check_exactly_once($standby, 'after promotion');
# the second database is served again too, its twins as replicated
$standby->poll_query_until('other', q{
SELECT count(*) = 2 FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = 'other'})
  or die 'workers of the second database did not start after promotion';
DtTest::check_exactly_once($standby, 'after promotion, second database', 'other');

# and it keeps going
$standby->safe_psql('postgres', DtTest::send_sql(500, 150));
DtTest::check_exactly_once($standby, 'after promotion, new events');

# Readers racing a rebuild: a worker that restarts purges its partition
# and loads it again.  A query that found the partition loaded when it
# started and copies it while the purge runs must start over (load epochs,
# views.c), never return part of the partition.  With no event in flight,
# every query counts every twin.  (A race: it can catch a regression, not
# prove its absence.)
$standby->safe_psql('postgres', q{
SELECT digitaltwin.create_model('race', 'acc(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'race', 'r' || i, '{"v": 1}' FROM generate_series(1, 50000) i;
});
is($standby->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('120s')}), 't',
	'the twins to race over are loaded');
my $killer = IPC::Run::start(
	[
		'psql', '-X', '-q', '-d', $standby->connstr('postgres'), '-c', q{
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE backend_type = 'digitaltwin worker' AND datname = 'postgres';
        PERFORM pg_sleep(0.25);
    END LOOP;
END $$}
	],
	'>', \my $killer_out, '2>', \my $killer_err);
my $race = $standby->safe_psql('postgres', q{
CREATE FUNCTION pg_temp.race() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    expected bigint := (SELECT count(*) FROM digitaltwin.twin_state);
    n bigint;
    runs int := 0;
    wrong int := 0;
BEGIN
    WHILE clock_timestamp() < statement_timestamp() + interval '10 s' LOOP
        SELECT count(*) INTO n FROM digitaltwin.twins;
        runs := runs + 1;
        IF n <> expected THEN
            wrong := wrong + 1;
        END IF;
    END LOOP;
    RETURN wrong || ' wrong of ' || runs;
END $$;
SELECT pg_temp.race();
});
$killer->finish;
like($race, qr/^0 wrong of \d+$/, "every query during worker restarts counts every twin ($race)");

$standby->stop;
done_testing();
