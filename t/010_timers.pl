# Durable timers fire exactly once per due time: across a kill -9 of the
# postmaster while they fall due, across a clean shutdown during which they
# fall due, and across the promotion of a standby that replayed them.  A
# timer's fire, the row's deletion from timer_state, the twin's new state and
# the fire's alert commit together, so after any of these a one-shot timer
# has fired once (state "fired" = 1, one alert, no row left), never twice
# and never not at all.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

# A model that arms a one-shot timer "once" ({"once": delay}) and a
# recurring one "tick" ({"every": period}), cancels one ({"cancel": name}),
# and counts the fires in its state ("fired" for "once", "ticks" for
# "tick") with one alert per fire whose details are the timer's payload
# (the twin's id).
my $model_sql = q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION tm(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    e digitaltwin.event_info := digitaltwin.current_event();
    s jsonb := coalesce(state, '{}') || jsonb_build_object(
                   'fired', coalesce((state->>'fired')::int, 0),
                   'ticks', coalesce((state->>'ticks')::int, 0));
BEGIN
    IF e.kind = 'timer' THEN
        PERFORM digitaltwin.alert('info', e.timer, event);
        IF e.timer = 'once' THEN
            RETURN s || jsonb_build_object('fired', (s->>'fired')::int + 1);
        END IF;
        RETURN s || jsonb_build_object('ticks', (s->>'ticks')::int + 1);
    END IF;
    IF event ? 'once' THEN
        PERFORM digitaltwin.set_timer('once', (event->>'once')::interval,
                                      jsonb_build_object('twin', twin_id));
    END IF;
    IF event ? 'every' THEN
        PERFORM digitaltwin.set_timer('tick', (event->>'every')::interval,
                                      jsonb_build_object('twin', twin_id),
                                      (event->>'every')::interval);
    END IF;
    IF event ? 'cancel' THEN
        PERFORM digitaltwin.cancel_timer(event->>'cancel');
    END IF;
    RETURN s;
END $$;
SELECT digitaltwin.create_model('tm', 'tm(text,jsonb,jsonb)');
};

# Check that every twin whose id starts with $prefix had its one-shot timer
# fire exactly once: "fired" = 1 in its state, one "once" alert carrying its
# payload, no "once" timer left.
sub check_fired_once
{
	my ($node, $prefix, $n, $what) = @_;

	is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}),
		't', "$what: idle");
	is( $node->safe_psql('postgres', qq{
SELECT count(*) || '/' || count(*) FILTER (WHERE (state->>'fired')::int = 1)
FROM digitaltwin.twins WHERE model = 'tm' AND twin_id LIKE '$prefix%'}),
		"$n/$n", "$what: every twin's one-shot timer fired exactly once");
	is( $node->safe_psql('postgres', qq{
SELECT count(*) || '/' || count(DISTINCT twin_id) || '/' ||
       count(*) FILTER (WHERE details->>'twin' = twin_id)
FROM digitaltwin.alerts WHERE model = 'tm' AND message = 'once' AND twin_id LIKE '$prefix%'}),
		"$n/$n/$n", "$what: one alert per twin, with the timer's payload");
	is( $node->safe_psql('postgres', qq{
SELECT count(*) FROM digitaltwin.timers WHERE name = 'once' AND twin_id LIKE '$prefix%'}),
		'0', "$what: no one-shot timer is left");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.dead_letters'),
		'0', "$what: no dead letters");
	return;
}

# Arm one-shot timers on twins $prefix1..$prefixN, due $after (a SQL
# expression of i, the twin's number) later.
sub arm
{
	my ($node, $prefix, $n, $after) = @_;
	$node->safe_psql('postgres', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'tm', '$prefix' || i, jsonb_build_object('once', ($after)::text)
FROM generate_series(1, $n) i});
	return;
}

# Number of one-shot fires so far.
sub fired
{
	my ($node, $prefix) = @_;
	return $node->safe_psql('postgres', qq{
SELECT count(*) FROM digitaltwin.alerts WHERE message = 'once' AND twin_id LIKE '$prefix%'});
}

my $node = DtTest::new_node('timers');
$node->start;
$node->safe_psql('postgres', $model_sql);

# 1. kill -9 of the postmaster while timers fall due.  200 one-shot
# timers due 2 to 4 s from now (20 a tenth of a second), 3 recurring ones.
arm($node, 'w', 200, q{interval '2 s' + (i % 20) * interval '100 ms'});
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'tm', 'r' || i, '{"every": "300 ms"}' FROM generate_series(1, 3) i});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'the timers are armed');
is( $node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE name = 'once') || '/' || count(*) FILTER (WHERE name = 'tick')
FROM digitaltwin.timers}),
	'200/3', 'the timers view shows them');

$node->poll_query_until('postgres', q{
SELECT count(*) >= 30 FROM digitaltwin.alerts WHERE message = 'once'})
  or die 'no timer fired';
my $before = fired($node, 'w');
ok(DtTest::kill9_and_wait($node), 'all processes of the killed instance exited');
cmp_ok($before, '<', 200, "killed the postmaster after $before of 200 fires");
$node->start;
$node->poll_query_until('postgres', q{
SELECT count(*) = 200 FROM digitaltwin.twins
WHERE model = 'tm' AND twin_id LIKE 'w%' AND (state->>'fired')::int >= 1})
  or die 'the timers did not all fire after the crash';
check_fired_once($node, 'w', 200, 'after kill -9');
is( $node->safe_psql('postgres', q{
SELECT string_agg(twin_id || ':' || name, ',' ORDER BY twin_id) FROM digitaltwin.timers}),
	'r1:tick,r2:tick,r3:tick', 'only the recurring timers are left');
my $ticks = $node->safe_psql('postgres',
	q{SELECT count(*) FROM digitaltwin.alerts WHERE message = 'tick'});
$node->poll_query_until('postgres', qq{
SELECT count(*) >= $ticks + 6 FROM digitaltwin.alerts WHERE message = 'tick'})
  or die 'the recurring timers stopped';

# 2. timers that fall due while the server is down fire once after start
arm($node, 'd', 50, q{interval '1.5 s'});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'more timers armed');
my $due = $node->safe_psql('postgres', q{
SELECT extract(epoch FROM max(due_at)) || '/' || count(*) FROM digitaltwin.timers
WHERE twin_id LIKE 'd%'});
$node->stop;
like($due, qr{/50$}, 'the timers were pending when the server stopped');
# waiting for time to pass while the server is down: nothing to poll
usleep(100_000) while time() < (split m{/}, $due)[0] + 0.5;
$node->start;
$node->poll_query_until('postgres', q{
SELECT count(*) = 50 FROM digitaltwin.alerts WHERE message = 'once' AND twin_id LIKE 'd%'})
  or die 'the timers due during the downtime did not fire';
check_fired_once($node, 'd', 50, 'after a downtime');

# The recurring timers fired once per due time too: cancelled, each twin's
# count of ticks equals its alerts.
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'tm', 'r' || i, '{"cancel": "tick"}' FROM generate_series(1, 3) i});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'the recurring timers are cancelled');
is( $node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE ticks > 0) || ':' ||
       coalesce(string_agg(twin_id || '=' || ticks || '/' || alerts, ',')
                FILTER (WHERE ticks <> alerts), '')
FROM (SELECT t.twin_id, (t.state->>'ticks')::bigint AS ticks,
             (SELECT count(*) FROM digitaltwin.alerts a
              WHERE a.twin_id = t.twin_id AND a.message = 'tick') AS alerts
      FROM digitaltwin.twins t WHERE t.model = 'tm' AND t.twin_id LIKE 'r%') s}),
	'3:', 'each tick of a recurring timer counted once, with one alert');
is($node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.timers'), '0',
	'no timer left');
$node->stop;

# 3. promotion of a standby: timers armed on the primary, replicated, fire
# on the promoted standby exactly once.
my $primary = DtTest::new_node('primary', '', allows_streaming => 1);
$primary->start;
$primary->safe_psql('postgres', $model_sql);
$primary->safe_psql('postgres', q{
CREATE ROLE analyst LOGIN;
GRANT digitaltwin_reader TO analyst;
});
$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

# early ones fire on the primary, late ones after the failover
arm($primary, 'e', 50, q{interval '200 ms'});
arm($primary, 'l', 50, q{interval '6 s'});
is($primary->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't',
	'timers armed on the primary');
$primary->poll_query_until('postgres', q{
SELECT count(*) = 50 FROM digitaltwin.alerts WHERE message = 'once' AND twin_id LIKE 'e%'})
  or die 'the early timers did not fire on the primary';
$primary->wait_for_catchup($standby);
my @analyst = (extra_params => [ '-U', 'analyst' ]);
is( $standby->safe_psql('postgres', q{
SELECT count(*) || '/' || count(*) FILTER (WHERE twin_id LIKE 'l%' AND name = 'once')
FROM digitaltwin.timers}, @analyst),
	'50/50', 'a reader on the standby sees the pending timers');
is( $standby->safe_psql('postgres', q{
SELECT string_agg(DISTINCT substr(twin_id, 1, 1) || (state->>'fired'), ',')
FROM digitaltwin.twins}),
	'e1,l0', 'the standby has the early fires and not the late ones');
$primary->stop('immediate');
$standby->promote;
$standby->poll_query_until('postgres', q{
SELECT count(*) = 50 FROM digitaltwin.alerts WHERE message = 'once' AND twin_id LIKE 'l%'})
  or die 'the timers did not fire after the promotion';
check_fired_once($standby, 'e', 50, 'after promotion, early timers');
check_fired_once($standby, 'l', 50, 'after promotion, late timers');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.timers'), '0',
	'no timer left on the promoted standby');
$standby->stop;

done_testing();
