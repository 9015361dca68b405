# A timer fire interrupted by kill -9 between its claim
# (the row's delete) and the batch's commit fires again after the restart,
# once: the twin counts one fire, the outbox holds one command of it, and
# the timer is gone.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('tcrash', "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION cr(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer('once', '0.5s', '{"sleep": 3}');
    END IF;
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        PERFORM digitaltwin.send_to_source(jsonb_build_object('fired', twin_id));
        PERFORM pg_sleep((event->>'sleep')::float8);
        RETURN jsonb_build_object('fires', coalesce((state->>'fires')::int, 0) + 1);
    END IF;
    RETURN coalesce(state, '{}');
END $$;
SELECT digitaltwin.create_model('cr', 'cr(text,jsonb,jsonb)');
SELECT digitaltwin.send('cr', 'a', '{"arm": true}');
SELECT digitaltwin.wait_idle('60s');
});
# the fire is running (its row deleted in the uncommitted batch)
$node->poll_query_until('postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND wait_event = 'PgSleep'})
  or die 'the fire never started';
my $victim = $node->safe_psql('postgres', q{
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND wait_event = 'PgSleep'});
ok(kill('KILL', $victim), "killed worker $victim while it fired");
$node->poll_query_until('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.twins WHERE model = 'cr'
        AND (state->>'fires')::int >= 1) = 1})
  or die 'the fire never completed after the restart';
is($node->safe_psql('postgres', q{SELECT state->>'fires' FROM digitaltwin.twins WHERE twin_id = 'a'}),
	'1', 'the fire applied once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.outbox}),
	'1', '... its command is in the outbox once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.timers}),
	'0', '... and the timer is consumed');
$node->stop;
done_testing();
