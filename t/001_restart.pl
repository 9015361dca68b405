# A clean restart: the live twins are rebuilt from the durable state, and
# processing continues with every event applied exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('restart');
$node->start;
DtTest::create_model($node);

# multi-row INSERT, COPY and send() (no crash here: each statement's commit
# is certain, so "sent" may be filled by separate statements)
$node->safe_psql('postgres', DtTest::send_sql(2000, 100));
$node->safe_psql('postgres', q{
COPY digitaltwin.events (model, twin_id, payload) FROM stdin;
acc	t1	{"v": 7}
acc	t2	{"v": 20}
\.
INSERT INTO sent (twin, v) VALUES ('t1', 7), ('t2', 20);
SELECT digitaltwin.send('acc', 't3', '{"v": 30}');
INSERT INTO sent (twin, v) VALUES ('t3', 30);
});
DtTest::check_exactly_once($node, 'before restart');

my $before = DtTest::live_twins($node);
my $twins = $node->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.twins');
cmp_ok($twins, '>=', 90, 'twins in shared memory before restart');

$node->restart;

# Shared memory is empty after a restart; the workers reload it when they
# start.
$node->poll_query_until('postgres',
	"SELECT count(*) = $twins FROM digitaltwin.twins")
  or die 'twins were not reloaded';
is(DtTest::live_twins($node), $before,
	'live twins after restart equal those before, state and event count');
ok($node->log_contains(qr/digitaltwin worker \d loaded \d+ twins/),
	'workers logged the reload');

# processing continues from the reloaded states
$node->safe_psql('postgres', DtTest::send_sql(1000, 120));
DtTest::check_exactly_once($node, 'after restart');

$node->stop;
done_testing();
