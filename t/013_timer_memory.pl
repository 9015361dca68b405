# Running out of shared memory with a timer due: after a failure for want
# of memory the worker halves its batches down to a single event and
# dead-letters that one (careful_limit); due timers must not keep a batch
# from shrinking (they go in batches of their own meanwhile), or the worker
# retries the same failing batch for ever.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $small = DtTest::new_node('small', q{
digitaltwin.max_memory = '1MB'
digitaltwin.workers = 1
});
$small->start;
$small->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION fat(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'pad', (SELECT string_agg(md5(twin_id || i || coalesce(state->>'n', '')), '')
                                      FROM generate_series(1, 625) i))
$$;
CREATE FUNCTION ticker(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer('tick', '0.05s', every => '0.05s');
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('grow', 'fat(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('ticker', 'ticker(text,jsonb,jsonb)');
SELECT digitaltwin.send('ticker', 'clock', '{"arm": true}');
SELECT digitaltwin.wait_idle('60s');
});
# more new twins than the memory holds
$small->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'grow', 'g' || i, '{}' FROM generate_series(1, 100) i;
});
is($small->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('30s')}),
	't', 'memory full with a timer due: the queue drains');
is($small->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.events}),
	'0', '... nothing stays in the queue');
is($small->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.twins WHERE model = 'grow')
     + (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'grow')}),
	'100', '... every grow event applied or dead-lettered');
note($small->safe_psql('postgres', q{SELECT worker, events_processed, last_error FROM digitaltwin.stats}));
$small->stop;
done_testing();
