# Security settings that live in the server configuration: superuser-owned
# models (digitaltwin.allow_superuser_models), the twins-per-model limit
# (digitaltwin.max_twins_per_model) and the shared memory limit
# (digitaltwin.max_memory: events that cannot get memory are dead-lettered,
# the others go on); and drop_model() while events flow, with every
# event accounted for exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('security', q{
digitaltwin.allow_superuser_models = off
digitaltwin.max_twins_per_model = 3
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE ROLE modeler;
GRANT digitaltwin_admin TO modeler;
CREATE FUNCTION life(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN event ? 'end' THEN NULL
                ELSE jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                                        'by', current_user) END
$$;
});

# --- superuser-owned models -------------------------------------------------

my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT digitaltwin.create_model('su', 'life(text,jsonb,jsonb)')});
isnt($ret, 0, 'a superuser cannot create a model by default');
like($err, qr/a superuser cannot own a model/, '... with a clear error');
like($err, qr/allow_superuser_models/, '... and a hint naming the setting');

$node->safe_psql('postgres', q{
SET ROLE modeler;
SELECT digitaltwin.create_model('life', 'life(text,jsonb,jsonb)');
RESET ROLE;
SELECT digitaltwin.send('life', 'a', '{}');
SELECT digitaltwin.wait_idle('30s');
});
is($node->safe_psql('postgres', q{SELECT state->>'by' FROM digitaltwin.twins WHERE twin_id = 'a'}),
	'modeler', 'an ordinary role owns and runs its model');

# an owner promoted to superuser after the fact: its events are refused
$node->safe_psql('postgres', q{
ALTER ROLE modeler SUPERUSER;
SELECT digitaltwin.send('life', 'a', '{}');
SELECT digitaltwin.wait_idle('30s');
ALTER ROLE modeler NOSUPERUSER;
SELECT digitaltwin.send('life', 'a', '{}');
SELECT digitaltwin.wait_idle('30s');
});
is( $node->safe_psql('postgres', q{SELECT sqlstate || ' ' || error FROM digitaltwin.dead_letters}),
	'42501 model "life" is owned by a superuser',
	'an event of a model whose owner became superuser is dead-lettered');
is($node->safe_psql('postgres', q{SELECT state->>'n' FROM digitaltwin.twins WHERE twin_id = 'a'}),
	'2', 'the model runs again once its owner is an ordinary role');

# explicitly allowed: a superuser may own a model
$node->append_conf('postgresql.conf', 'digitaltwin.allow_superuser_models = on');
$node->restart;
$node->safe_psql('postgres',
	q{SELECT digitaltwin.create_model('su', 'life(text,jsonb,jsonb)')});
is($node->safe_psql('postgres', q{SELECT owner FROM digitaltwin.models WHERE name = 'su'}),
	'postgres', 'with allow_superuser_models on, a superuser may own a model');

# --- twins per model ----------------------------------------------------------

$node->safe_psql('postgres', q{
TRUNCATE digitaltwin.dead_letters;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'life', 't' || i, '{}' FROM generate_series(1, 4) i;
SELECT digitaltwin.wait_idle('30s');
});
# "a" exists already: two more fit under the limit of 3
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'life'}),
	'3', 'a model never has more twins than digitaltwin.max_twins_per_model');
is( $node->safe_psql('postgres', q{
SELECT string_agg(DISTINCT sqlstate || ' ' || error, '; ') || ' x' || count(*)
FROM digitaltwin.dead_letters WHERE model = 'life'}),
	'53400 model "life" has reached digitaltwin.max_twins_per_model (3 twins) x2',
	'events that would create more are dead-lettered with a clear error');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.twins WHERE model = 'su'}),
	'0', '(the other model is not counted against it)');

# the count survives a restart; ending a twin frees its place
$node->restart;
$node->safe_psql('postgres', q{
TRUNCATE digitaltwin.dead_letters;
SELECT digitaltwin.send('life', 'new1', '{}');
SELECT digitaltwin.wait_idle('30s');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.dead_letters}),
	'1', 'after a restart the limit still holds');
$node->safe_psql('postgres', q{
SELECT digitaltwin.send('life', 'a', '{"end": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT digitaltwin.send('life', 'new2', '{}');
SELECT digitaltwin.wait_idle('30s');
});
is( $node->safe_psql('postgres', q{
SELECT count(*) || ' ' || bool_or(twin_id = 'new2') || ' ' || bool_or(twin_id = 'a')
FROM digitaltwin.twins WHERE model = 'life'}),
	'3 true false', 'ending a twin makes room for a new one');
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.dead_letters}),
	'1', '... without another dead letter');

# --- drop_model while events flow --------------------------------------------

$node->safe_psql('postgres', q{
CREATE SEQUENCE kseq;
CREATE TABLE sent_k (k bigint PRIMARY KEY);
CREATE TABLE applied_k (k bigint PRIMARY KEY);
GRANT INSERT ON applied_k TO modeler;
CREATE FUNCTION logk(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    -- applied twice would violate the primary key
    INSERT INTO applied_k VALUES ((event->>'k')::bigint);
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SET ROLE modeler;
SELECT digitaltwin.create_model('drp', 'logk(text,jsonb,jsonb)');
});
# three twins, within the limit of 3; a loop of single-statement transactions: the events and their keys in
# one statement; inserts refused while the model is missing simply fail
my $file = $node->basedir . '/drp.sql';
open my $fh, '>', $file or die "cannot write $file: $!";
print $fh q{
WITH s AS (INSERT INTO sent_k SELECT nextval('kseq') FROM generate_series(1, 20) RETURNING k)
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'drp', 'd' || (k % 3), jsonb_build_object('k', k) FROM s;
};
close $fh;
my $psql = join(' ', 'psql', '-X', '-q', '-h', $node->host, '-p', $node->port,
	'-f', $file, 'postgres');
my ($sout, $serr) = ('', '');
my $sender = IPC::Run::start(
	[ 'bash', '-c', "for i in \$(seq 400); do $psql 2>/dev/null; done" ],
	'>', \$sout, '2>', \$serr);

for my $round (1 .. 3)
{
	$node->poll_query_until('postgres',
		qq{SELECT count(*) >= $round * 400 FROM sent_k})
	  or die 'the sender stalled';
	$node->safe_psql('postgres', q{SELECT digitaltwin.drop_model('drp', force => true)});
	$node->safe_psql('postgres', q{
SET ROLE modeler;
SELECT digitaltwin.create_model('drp', 'logk(text,jsonb,jsonb)');
});
}
$sender->finish;
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('120s')}),
	't', 'drop_model under load: the queue drains');

my $sent = $node->safe_psql('postgres', 'SELECT count(*) FROM sent_k');
cmp_ok($sent, '>=', 1200, 'drop_model under load: events were committed throughout');
is( $node->safe_psql('postgres', q{
WITH dead AS (SELECT (payload->>'k')::bigint AS k FROM digitaltwin.dead_letters WHERE model = 'drp'),
     outcome AS (SELECT k FROM applied_k UNION ALL SELECT k FROM dead)
SELECT (SELECT count(*) FROM sent_k s WHERE (SELECT count(*) FROM outcome o WHERE o.k = s.k) <> 1)
     + (SELECT count(*) FROM outcome o WHERE NOT EXISTS (SELECT 1 FROM sent_k s WHERE s.k = o.k))}),
	'0', 'drop_model under load: every committed event applied or dead-lettered, exactly once');
# (events queued before a drop are dead-lettered if a worker reaches them
# before the model is created again, applied by the new model otherwise)
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'drp' AND sqlstate <> '42704'}),
	'0', 'drop_model under load: dead letters only for a model that did not exist');

# the server never crashed
ok(!(slurp_file($node->logfile) =~ /terminated by signal|PANIC/),
	'no backend or worker crashed');
$node->stop;

# --- shared memory exhausted: events stay queued, stats and log say so --------

my $small = DtTest::new_node('small', q{
digitaltwin.max_memory = '1MB'
});
$small->start;
$small->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE FUNCTION fat(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('pad', repeat('x', 200000),
                              'n', coalesce((state->>'n')::int, 0) + 1)
$$;
CREATE FUNCTION thin(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) $$;
SELECT digitaltwin.create_model('fat', 'fat(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('thin', 'thin(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'thin', 't' || i, '{}' FROM generate_series(1, 10) i;
SELECT digitaltwin.wait_idle('60s');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT m, m || i, '{}' FROM generate_series(1, 20) i, unnest(ARRAY['fat', 'thin']) m;
});
# 20 states of 200 kB cannot fit in 1 MB: the events that need memory that
# is not there are dead-lettered, one at a time; the others go on
is($small->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('120s')}),
	't', 'out of shared memory: nothing stays stuck in the queue');
my ($applied, $dead) = split /\|/, $small->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM digitaltwin.twins WHERE model = 'fat'),
       (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'fat')});
cmp_ok($dead, '>', 0, '... events that need new memory are dead-lettered');
cmp_ok($applied, '>', 0, '... those that fit are applied');
is($applied + $dead, 20, '... every event of the fat model applied or dead-lettered once');
is( $small->safe_psql('postgres', q{
SELECT string_agg(DISTINCT sqlstate || ' ' || error, '; ') FROM digitaltwin.dead_letters}),
	'53200 digitaltwin shared memory for twins is exhausted',
	'... with SQLSTATE 53200 and a clear error');
is( $small->safe_psql('postgres', q{
SELECT count(*) || ' ' || sum(event_count) FROM digitaltwin.twins WHERE model = 'thin'}),
	'30 30', 'the small twins of the other model are all applied');
like(slurp_file($small->logfile),
	qr/digitaltwin shared memory for twins is exhausted/,
	'... and the log says why');

# a twin whose state keeps its size needs no new memory: still updated
my $fat_twin = $small->safe_psql('postgres',
	q{SELECT twin_id FROM digitaltwin.twins WHERE model = 'fat' ORDER BY twin_id LIMIT 1});
$small->safe_psql('postgres', qq{
SELECT digitaltwin.send('fat', '$fat_twin', '{}');
SELECT digitaltwin.send('thin', 't1', '{}');
SELECT digitaltwin.wait_idle('60s');
});
is( $small->safe_psql('postgres', qq{
SELECT string_agg(twin_id || '=' || (state->>'n'), ',' ORDER BY twin_id)
FROM digitaltwin.twins WHERE twin_id IN ('$fat_twin', 't1')}),
	"$fat_twin=2,t1=2", 'a full memory still updates twins whose state keeps its size');
is($small->safe_psql('postgres', 'SELECT count(*) FROM digitaltwin.dead_letters'),
	$dead, '... without another dead letter');

# with more memory, the dead letters can be sent again and are applied
$small->append_conf('postgresql.conf', q{digitaltwin.max_memory = '64MB'});
$small->restart;
$small->safe_psql('postgres', q{
WITH d AS (DELETE FROM digitaltwin.dead_letters RETURNING model, twin_id, payload, event_id)
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT model, twin_id, payload FROM d ORDER BY event_id;
});
is($small->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}),
	't', 'with more memory the queue drains');
is( $small->safe_psql('postgres', q{
SELECT count(*) || ' ' || sum(event_count) FROM digitaltwin.twins WHERE model = 'fat'}),
	'20 21', '... and every event was applied once');
$small->stop;
done_testing();
