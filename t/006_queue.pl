# The queue stays bounded: its partitions rotate and consumed ones are
# truncated while events stream, without losing or repeating any event;
# alerts and dead letters older than their retention are deleted.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('queue', q{
digitaltwin.queue_rotation = '300ms'
digitaltwin.alert_retention = '1d'
digitaltwin.dead_letter_retention = '2d'
});
$node->start;
DtTest::create_model($node);

my $start = $node->safe_psql('postgres',
	'SELECT generation || \',\' || drained_through FROM digitaltwin.queue_state');
is($start, '0,-1', 'the queue starts at generation 0');

# A model that refuses an event older than its twin's last one: one client
# streams numbered events to three twins while the queue rotates, so that a
# twin's events spread over two partitions, which a fetch must merge by id.
$node->safe_psql('postgres', q{
CREATE SEQUENCE ordseq;
CREATE TABLE ord_sent (s bigint, twin text);
CREATE FUNCTION ordered(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'s')::bigint <= coalesce((state->>'last')::bigint, 0) THEN
        RAISE EXCEPTION 'event % after %', event->>'s', state->>'last';
    END IF;
    RETURN jsonb_build_object('last', (event->>'s')::bigint,
                              'n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('ordered', 'ordered(text,jsonb,jsonb)');
});
my $ordered = $node->basedir . '/ordered.sql';
open my $fh, '>', $ordered or die "cannot write $ordered: $!";
print $fh "WITH e AS MATERIALIZED (SELECT nextval('ordseq') AS s FROM generate_series(1, 20)), "
  . "w AS (INSERT INTO ord_sent SELECT s, 'o' || s % 3 FROM e) "
  . "INSERT INTO digitaltwin.events (model, twin_id, payload) "
  . "SELECT 'ordered', 'o' || s % 3, jsonb_build_object('s', s) FROM e ORDER BY s;\n";
close $fh;

# stream until the queue has rotated several times (maintenance runs once
# a second, so that takes a few seconds)
my $script = DtTest::pgbench_script($node, 20, 300);
my $h = DtTest::start_pgbench($node, $script, 2, 120);
my $ho = DtTest::start_pgbench($node, $ordered, 1, 120);
$node->poll_query_until('postgres',
	'SELECT drained_through >= 3 FROM digitaltwin.queue_state')
  or die 'the queue did not rotate';
$h->kill_kill;
$ho->kill_kill;
DtTest::check_exactly_once($node, 'while the queue rotated');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'ordered'}),
	'0', 'every twin\'s events applied in the order they were sent');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT twin, max(s) AS last, count(*) AS n FROM ord_sent GROUP BY twin) o
FULL JOIN (SELECT * FROM digitaltwin.twins WHERE model = 'ordered') t ON t.twin_id = o.twin
WHERE (t.state->>'last')::bigint IS DISTINCT FROM o.last OR (t.state->>'n')::bigint IS DISTINCT FROM o.n}),
	'0', 'each ordered twin saw all its events');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM ord_sent'), '>', 100,
	'the ordered stream sent events');

# once idle, every partition but the current one is truncated: nothing is
# left for VACUUM
$node->safe_psql('postgres', DtTest::send_sql(10, 300));
$node->poll_query_until('postgres', q{
SELECT drained_through = generation - 1 FROM digitaltwin.queue_state})
  or die 'the queue did not drain';
my ($gen) = $node->safe_psql('postgres', 'SELECT generation FROM digitaltwin.queue_state');
my $sizes = $node->safe_psql('postgres', qq{
SELECT string_agg(c.relname || '=' || pg_relation_size(c.oid), ',' ORDER BY c.relname)
FROM pg_class c
WHERE c.relnamespace = 'digitaltwin'::regnamespace AND c.relname ~ '^events_[0-9]\$'
  AND c.relname <> 'events_' || ($gen % 3)});
like($sizes, qr/^events_\d=0,events_\d=0$/, "consumed partitions are truncated ($sizes)");
cmp_ok($gen, '>=', 4, "the queue went through $gen generations");
DtTest::check_exactly_once($node, 'after the queue drained');

# retention
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.alerts (model, twin_id, severity, message, event_id, raised_at)
VALUES ('acc', 'old', 'info', 'old alert', -1, now() - interval '25 hours'),
       ('acc', 'old', 'info', 'recent alert', -2, now() - interval '23 hours');
INSERT INTO digitaltwin.dead_letters (event_id, model, twin_id, payload, error, sqlstate, enqueued_at, failed_at)
VALUES (-1, 'acc', 'old', '{}', 'old', 'XX000', now() - interval '3 days', now() - interval '3 days'),
       (-2, 'acc', 'old', '{}', 'recent', 'XX000', now() - interval '1 day', now() - interval '1 day');
});
$node->poll_query_until('postgres', q{
SELECT NOT EXISTS (SELECT 1 FROM digitaltwin.alerts WHERE message = 'old alert')
   AND NOT EXISTS (SELECT 1 FROM digitaltwin.dead_letters WHERE error = 'old')})
  or die 'retention did not apply';
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.alerts WHERE twin_id = 'old') || ',' ||
       (SELECT count(*) FROM digitaltwin.dead_letters WHERE twin_id = 'old')}),
	'1,1', 'rows younger than the retention stay');

# digitaltwin.batch_delay: after a small batch, a worker's next batch waits
# until the delay has passed, and the events committed meanwhile make one
# batch.  (The setting is given at restart: a reload reaches the workers at
# a moment the test cannot observe.)
$node->append_conf('postgresql.conf', "digitaltwin.batch_delay = '1s'");
$node->restart;
my $owner = q{(SELECT batches FROM digitaltwin.worker_stats()
               WHERE worker = digitaltwin.partition_of('spread', 2))};
# (not wait_idle(), which waits for a fetch that starts after it is called:
# that fetch is the one delayed)
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 'spread', '{"v": 1}')});
$node->poll_query_until('postgres', q{
SELECT EXISTS (SELECT 1 FROM digitaltwin.twins WHERE twin_id = 'spread')})
  or die 'the first event was not processed';
my $before = $node->safe_psql('postgres', "SELECT $owner");
# three transactions (psql reads them from stdin, one by one), committed
# well within the second that follows the first event's batch
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 'spread', '{"v": 2}');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 'spread', '{"v": 3}');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 'spread', '{"v": 4}');
SELECT digitaltwin.wait_idle('60s');
});
is($node->safe_psql('postgres', "SELECT $owner - $before"), '1',
	'three one-event transactions after a small batch make one batch');
is($node->safe_psql('postgres', q{
SELECT state->>'n' || ',' || (state->>'sum') FROM digitaltwin.twins WHERE twin_id = 'spread'}),
	'4,10', 'each of the four events applied once, in order');

$node->stop;
done_testing();
