# The rental car example (examples/rental_car): the cars' alerts, the
# regions' roll-ups (fed by the cars' messages) and the commands a gateway
# program took from the outbox, against independent queries over the
# generated positions.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $example = "$FindBin::RealBin/../examples/rental_car";

my $node = DtTest::new_node('rental_car');
$node->start;

# the model and the data, not queued yet (-v queue=off)
$node->safe_psql('postgres', 'SET client_min_messages = warning;' .
	  slurp_file("$example/model.sql"));
is( $node->safe_psql('postgres', slurp_file("$example/generate.sql"),
		extra_params => [ '-v', 'queue=off' ]),
	'600', 'generated 600 positions');

# the gateway runs as a role that is only a member of digitaltwin_gateway
$node->safe_psql('postgres', 'CREATE ROLE gateway LOGIN IN ROLE digitaltwin_gateway');

# The reference, from rental_car_positions, drivers and rentals alone: each
# position with the limit and fence of its car's rental, and the previous
# position of its car
$node->safe_psql('postgres', q{
CREATE TABLE ref_position AS
SELECT p.*,
       130 - CASE WHEN d.age < 25 THEN 20 ELSE 0 END
           - CASE WHEN d.points >= 6 THEN 10 ELSE 0 END
           - 10 * least(d.accidents, 2) AS lim,
       (p.lat < r.min_lat OR p.lat > r.max_lat
        OR p.lon < r.min_lon OR p.lon > r.max_lon) AS outside,
       'grid-' || floor(p.lat * 10)::int || '-' || floor(p.lon * 10)::int AS region,
       row_number() OVER (PARTITION BY p.car ORDER BY p.event_time DESC) = 1 AS latest
FROM rental_car_positions p
JOIN rentals r ON r.car_id = p.car
JOIN drivers d ON d.driver_id = r.driver_id;
ALTER TABLE ref_position ADD COLUMN was_outside boolean;
UPDATE ref_position x SET was_outside = coalesce(w.prev, false)
FROM (SELECT reading, lag(outside) OVER (PARTITION BY car ORDER BY event_time) AS prev
      FROM ref_position) w
WHERE w.reading = x.reading;
});
my $speeding = $node->safe_psql('postgres',
	'SELECT count(*) FROM ref_position WHERE speed > lim');
cmp_ok($speeding, '>', 5, "the stream has speeding positions ($speeding)");

# Build and start the gateway: it exits once it has delivered as many
# commands as there are speeding positions (or after 60 s without one)
my $gateway = $node->basedir . '/gateway';
my $incdir = $node->config_data('--includedir');
my $libdir = $node->config_data('--libdir');
is(system('gcc', '-O2', '-Wall', '-o', $gateway, "$example/gateway.c",
		"-I$incdir", "-L$libdir", '-lpq'),
	0, 'gateway.c builds');
my ($out, $err) = ('', '');
my $gw = IPC::Run::start(
	[ $gateway, $node->connstr('postgres') . ' user=gateway',
	  'rental_car', $speeding, '60' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(180));
$gw->pump until $err =~ /listening/;

# stream the positions
is($node->safe_psql('postgres', 'SELECT rental_car_queue()'), '600', 'queued');
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('120s')}),
	't', 'the cars and their regions are idle');
ok($gw->finish, 'the gateway got all its commands (exit status 0)');
like($err, qr/gateway: $speeding commands/, 'the gateway says so');

# the gateway printed one command per speeding position
my @lines = sort split /\n/, $out;
my @want = sort split /\n/, $node->safe_psql('postgres', q{
SELECT car || ' slow_down ' || lim || ' (speed ' || speed || ', reading ' || reading || ')'
FROM ref_position WHERE speed > lim});
is(scalar @lines, $speeding, 'one line per command');
is_deeply(\@lines, \@want, 'the commands are those of the speeding positions');
is( $node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE taken_at IS NULL) || '/' || count(*)
FROM digitaltwin.outbox WHERE model = 'rental_car'}),
	"0/$speeding", 'nothing left untaken in the outbox');

# speeding and geofence alerts, each once
$node->safe_psql('postgres', q{
CREATE TABLE model_alerts AS
SELECT details->>'rule' AS rule, twin_id AS car, (details->>'reading')::bigint AS reading
FROM digitaltwin.alerts WHERE model = 'rental_car';
CREATE TABLE ref_alerts AS
SELECT 'speeding' AS rule, car, reading FROM ref_position WHERE speed > lim
UNION ALL
SELECT 'geofence', car, reading FROM ref_position WHERE outside AND NOT was_outside;
});
is( $node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM (TABLE ref_alerts EXCEPT ALL TABLE model_alerts) m) || '/' ||
       (SELECT count(*) FROM (TABLE model_alerts EXCEPT ALL TABLE ref_alerts) u)}),
	'0/0', 'alerts: none missing, none unexpected');
my $exits = $node->safe_psql('postgres',
	q{SELECT count(*) FROM model_alerts WHERE rule = 'geofence'});
cmp_ok($exits, '>', 2, "cars left their geofence ($exits exits)");
cmp_ok($node->safe_psql('postgres',
		q{SELECT count(*) FROM ref_position WHERE outside AND was_outside}),
	'>', 0, 'some positions stayed outside (no alert for those)');

# the regions' roll-ups: positions per region, and the cars now in each
# with their latest speed
is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT region, count(*) AS positions FROM ref_position GROUP BY region) e
FULL JOIN (SELECT twin_id, (state->>'positions')::bigint AS positions
           FROM digitaltwin.twins WHERE model = 'rental_region') t
     ON t.twin_id = e.region
WHERE e.positions IS DISTINCT FROM t.positions}),
	'0', 'positions per region equal those generated');
is( $node->safe_psql('postgres', q{
SELECT count(*)
FROM (SELECT region, car, speed FROM ref_position WHERE latest) e
FULL JOIN (SELECT t.twin_id, c.key AS car, c.value::int AS speed
           FROM digitaltwin.twins t, jsonb_each(t.state->'cars') c
           WHERE t.model = 'rental_region') m
     ON m.twin_id = e.region AND m.car = e.car
WHERE e.speed IS DISTINCT FROM m.speed}),
	'0', 'each car is in the region of its latest position, with its latest speed');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.twins t
WHERE t.model = 'rental_region'
  AND (t.state->>'count')::int <> (SELECT count(*) FROM jsonb_object_keys(t.state->'cars'))}),
	'0', 'the regions count their cars');
my $moves = $node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT region, lag(region) OVER (PARTITION BY car ORDER BY event_time) AS prev
                      FROM ref_position) x WHERE region <> prev});
my $regions = $node->safe_psql('postgres',
	q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'rental_region'});
cmp_ok($moves, '>', 10, "cars changed region ($moves times, $regions regions)");
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.dead_letters WHERE model IN ('rental_car', 'rental_region')}),
	'0', 'no dead letters');

# a region accepts only its cars' messages
$node->safe_psql('postgres',
	q{SELECT digitaltwin.send('rental_region', 'grid-457-48', '{"speed": 1}')});
$node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')});
like( $node->safe_psql('postgres',
		q{SELECT error FROM digitaltwin.dead_letters WHERE model = 'rental_region'}),
	qr/only cars send to regions/, 'an event sent to a region directly is dead-lettered');

$node->stop;
note("speeding $speeding exits $exits moves $moves regions $regions");
done_testing();
