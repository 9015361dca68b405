# Dead letters in the server log: one line per dead letter, with the
# error's SQLSTATE and where in the model it happened, at most ten a
# second per worker; those left out are counted in a later line.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('deadlog', "digitaltwin.workers = 1\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION strict_reading(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'v')::int < 0 THEN
        RAISE EXCEPTION 'negative reading %', event->>'v' USING ERRCODE = 'data_exception';
    END IF;
    RETURN event;
END $$;
SELECT digitaltwin.create_model('strict_reading', 'strict_reading(text,jsonb,jsonb)');
});

my $offset = -s $node->logfile;
# 30 bad readings in one batch: more than a second's worth of log lines
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'strict_reading', 's' || i, jsonb_build_object('v', -i) FROM generate_series(1, 30) i});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'the events were consumed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.dead_letters}), '30',
	'all 30 are dead letters');

my $log = slurp_file($node->logfile, $offset);
my @lines = $log =~ /digitaltwin: event \d+ of model "strict_reading" for twin "s\d+" dead-lettered: negative reading -\d+ \(SQLSTATE 22000\)/g;
is(scalar(@lines), 10, 'the log has a line for the first ten dead letters of the second');
like($log, qr/dead-lettered: negative reading -1 \(SQLSTATE 22000\)\n.*CONTEXT:  PL\/pgSQL function strict_reading\(text,jsonb,jsonb\) line \d+ at RAISE/,
	'with the error\'s context: the function and line');

# the next dead letter once the second is over logs the count left out
my $after = $node->safe_psql('postgres', q{SELECT clock_timestamp() + interval '1.5 s'});
$node->poll_query_until('postgres', qq{SELECT clock_timestamp() > '$after'})
  or die 'time did not pass';
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('strict_reading', 'later', '{"v": -1}')});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'one more consumed');
$log = slurp_file($node->logfile, $offset);
like($log, qr/digitaltwin: 20 more dead letters were not logged \(at most 10 a second\)/,
	'the 20 dead letters left out are counted in the log');
like($log, qr/dead-lettered: negative reading -1 \(SQLSTATE 22000\)(?s:.*)twin "later" dead-lettered/,
	'and the new one has its line again');

$node->stop;
done_testing();
