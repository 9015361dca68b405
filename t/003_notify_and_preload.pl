# Alerts are announced with NOTIFY digitaltwin_alerts at commit; and the SQL
# API explains itself when the library is not preloaded.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# The poll interval is an hour: only the commit wake-up can get events
# processed within wait_idle's timeout.
my $node = DtTest::new_node('notify', "digitaltwin.poll_interval = '1h'\n");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION alarm(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'bpm')::int > 150 THEN
        PERFORM digitaltwin.alert('critical', 'heart rate "' || (event->>'bpm') || '" too high',
                                  event);
    END IF;
    RETURN event;
END $$;
SELECT digitaltwin.create_model('alarm', 'alarm(text,jsonb,jsonb)');
});

# The listener hears each alert once, with its id, model, twin, severity and
# message.
my ($ret, $out, $err) = $node->psql('postgres', q{
LISTEN digitaltwin_alerts;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('alarm', 'patient-1', '{"bpm": 120}'),
    ('alarm', 'patient-1', '{"bpm": 180}'),
    ('alarm', 'patient-2', '{"bpm": 151}');
SELECT digitaltwin.wait_idle('20s');
SELECT 'done';
});
is($ret, 0, 'listener session ran');
like($out, qr/^t$/m, 'events processed without waiting for the poll interval');
my @notes = $out =~ /Asynchronous notification "digitaltwin_alerts" with payload "(.*)" received/g;
is(scalar @notes, 2, 'one notification per alert');

my $ids = $node->safe_psql('postgres',
	q{SELECT string_agg(id::text, ',' ORDER BY twin_id) FROM digitaltwin.alerts});
my @alert_ids = split /,/, $ids;
my %by_twin;
for my $n (@notes)
{
	like($n, qr/"model": "alarm"/, 'payload names the model');
	like($n, qr/"severity": "critical"/, 'payload has the severity');
	my ($twin) = $n =~ /"twin_id": "([^"]+)"/;
	my ($id) = $n =~ /"id": (\d+)/;
	$by_twin{$twin} = $id;
}
is($by_twin{'patient-1'}, $alert_ids[0], 'patient-1 notification carries its alert id');
is($by_twin{'patient-2'}, $alert_ids[1], 'patient-2 notification carries its alert id');
like($notes[0] . $notes[1], qr/heart rate \\"180\\" too high/, 'message is JSON-escaped');

# A rolled-back insert raises nothing and wakes nobody into raising anything.
($ret, $out, $err) = $node->psql('postgres', q{
LISTEN digitaltwin_alerts;
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('alarm', 'patient-3', '{"bpm": 200}');
ROLLBACK;
SELECT digitaltwin.wait_idle('20s');
SELECT count(*) FROM digitaltwin.alerts WHERE twin_id = 'patient-3';
});
unlike($out, qr/Asynchronous notification/, 'no notification for a rolled-back event');
like($out, qr/^0$/m, 'no alert row for a rolled-back event');

$node->stop;

# Without shared_preload_libraries: a clear error with a hint.  CREATE
# EXTENSION refuses (no launcher would serve the database) ...
my $plain = PostgreSQL::Test::Cluster->new('not_preloaded');
$plain->init;
$plain->start;
($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION digitaltwin');
isnt($ret, 0, 'CREATE EXTENSION fails without the preloaded library');
like($err, qr/digitaltwin must be loaded via shared_preload_libraries/, 'error says why');
is($plain->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'digitaltwin'}),
	'0', 'and leaves no extension behind');

# ... and an extension created while it was preloaded says the same once
# the library is no longer.
$plain->stop;
$plain->append_conf('postgresql.conf', "shared_preload_libraries = 'digitaltwin'\n");
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION digitaltwin');
$plain->stop;
$plain->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$plain->start;
($ret, $out, $err) = $plain->psql('postgres',
	q{SELECT digitaltwin.send('m', 't', '{}')});
isnt($ret, 0, 'send fails without the preloaded library');
like($err, qr/digitaltwin must be loaded via shared_preload_libraries/, 'error says why');
like($err, qr/HINT:  Add 'digitaltwin' to shared_preload_libraries/, 'hint says how');
($ret, $out, $err) = $plain->psql('postgres', q{SELECT * FROM digitaltwin.twins});
like($err, qr/shared_preload_libraries/, 'the live view says the same');
$plain->stop;

done_testing();
