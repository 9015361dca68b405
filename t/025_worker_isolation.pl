# A database whose default isolation level is REPEATABLE READ (or
# SERIALIZABLE): the workers' batches still run READ COMMITTED.  Each
# fetch must take a snapshot after its batch was counted, or wait_idle()
# could return before an event committed ahead of it was applied; a model
# sees the level of the batch it runs in.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('isolation');
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION level_seen(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('level', current_setting('transaction_isolation'),
                              'n', coalesce((state->>'n')::int, 0) + 1)
$$;
SELECT digitaltwin.create_model('level', 'level_seen(text,jsonb,jsonb)');
});

# the sessions below choose their own level: wait_idle() refuses to run
# in a REPEATABLE READ transaction
my $rc = q{SET default_transaction_isolation = 'read committed';};
foreach my $level ('repeatable read', 'serializable')
{
	$node->safe_psql('postgres',
		"ALTER DATABASE postgres SET default_transaction_isolation = '$level'");
	$node->restart;
	is($node->safe_psql('postgres', 'SHOW default_transaction_isolation'),
		$level, "the database defaults to $level");
	$node->safe_psql('postgres', $rc . q{
		INSERT INTO digitaltwin.events (model, twin_id, payload)
		SELECT 'level', 't' || i, '{}' FROM generate_series(1, 20) i;});
	is($node->safe_psql('postgres', $rc . q{SELECT digitaltwin.wait_idle('60s')}),
		't', "events applied ($level)");
	is( $node->safe_psql(
			'postgres', $rc . q{
		SELECT string_agg(DISTINCT state->>'level', ',') || ':' || sum(event_count)
		FROM digitaltwin.twins WHERE model = 'level'}),
		'read committed:' . ($level eq 'repeatable read' ? 20 : 40),
		"the batches ran READ COMMITTED ($level by default)");
}

$node->stop;
done_testing();
