# Every database of the cluster: one launcher serves each database that has
# the extension with its own workers.  Three databases stream at once, each
# with exact twin states and none seeing another's twins; a database created
# and given the extension while the server runs is served without a
# restart; DROP EXTENSION and DROP DATABASE (without FORCE) of one database
# while the others stream; ALTER DATABASE ... RENAME and CREATE DATABASE ...
# TEMPLATE of a served database; refusals (no free background worker slot,
# digitaltwin.databases) instead of a silent queue; digitaltwin.stats per
# database; a restart.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = DtTest::new_node('multi', q{
max_worker_processes = 16
});
$node->start;

# --- helpers -------------------------------------------------------------------

# stderr of $sql run in $db with verbose errors (which show the SQLSTATE),
# and whether it succeeded.
sub run_verbose
{
	my ($db, $sql, $on) = @_;
	$on //= $node;
	my ($out, $err) = ('', '');
	my $ret = $on->psql($db, "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1);
	return ($ret, $err);
}

# Stream events of model acc into $db at a bounded rate (a backlog the 2
# cores could not drain would only slow the test) until stop_stream().
my $script = DtTest::pgbench_script($node, 20, 50);
sub start_stream
{
	my ($db) = @_;
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[
			'pgbench', '-n', '-c', '1', '-R', '40', '-T', '300', '-f', $script,
			'-h', $node->host, '-p', $node->port, $db
		],
		'>', \$out, '2>', \$err);
}

# Stop a stream and wait until its session has ended: a transaction it had
# committed is then in "sent" and in the queue, one it had not is in
# neither.
sub stop_stream
{
	my ($h, $db) = @_;
	$h->kill_kill;
	$node->poll_query_until('postgres', qq{
SELECT count(*) = 0 FROM pg_stat_activity
WHERE datname = '$db' AND backend_type = 'client backend'})
	  or die "the stream into $db did not end";
	return;
}

sub sent_count
{
	my ($db) = @_;
	return $node->safe_psql($db, 'SELECT count(*) FROM sent');
}

# Events that only database $db gets: twin "only_$db" gets $k, and twin
# "same" (a twin id every database has) gets 100 * $k.
sub send_markers
{
	my ($db, $k) = @_;
	$node->safe_psql($db, qq{
BEGIN;
INSERT INTO sent (twin, v) VALUES ('only_$db', $k), ('same', 100 * $k);
SELECT digitaltwin.send('acc', 'only_$db', jsonb_build_object('v', $k));
SELECT digitaltwin.send('acc', 'same', jsonb_build_object('v', 100 * $k));
COMMIT;
});
	return;
}

# the marker twins a database sees
sub markers
{
	my ($db) = @_;
	return $node->safe_psql($db, q{
SELECT string_agg(twin_id || ':' || (state->>'sum'), ',' ORDER BY twin_id)
FROM digitaltwin.twins WHERE twin_id LIKE 'only\_%' OR twin_id = 'same'});
}

my $live_query = q{
SELECT string_agg(twin_id || '=' || state::text || '#' || event_count, ',' ORDER BY twin_id)
FROM digitaltwin.twins WHERE model = 'acc'};

# --- three databases streaming at once -----------------------------------------

foreach my $db (qw(db1 db2 db3))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	DtTest::create_model($node, $db);
}
foreach my $db (qw(db1 db2 db3))
{
	ok(DtTest::wait_workers($node, $db, 2), "$db: its 2 workers run after CREATE EXTENSION");
	ok($node->log_contains(qr/digitaltwin: serving database "$db" with 2 workers/),
		"$db: the log says it is served");
}
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'digitaltwin launcher'}),
	'1', 'one launcher');

my %stream = map { $_ => start_stream($_) } qw(db1 db2 db3);
my $k = 0;
send_markers($_, ++$k) foreach qw(db1 db2 db3);
# every stream has committed a few transactions
foreach my $db (qw(db1 db2 db3))
{
	$node->poll_query_until($db, 'SELECT count(*) >= 200 FROM sent')
	  or die "no events streamed into $db";
}
stop_stream($stream{db3}, 'db3');
DtTest::check_exactly_once($node, 'db3 streamed with db1 and db2', 'db3');
is(markers('db3'), 'only_db3:3,same:300', 'db3 sees its own twins only');

# --- while db1 and db2 stream: a new database, DROP EXTENSION, DROP DATABASE ---

my %before = map { $_ => sent_count($_) } qw(db1 db2);

# a database created and given the extension while the server runs is
# served right away
$node->safe_psql('postgres', 'CREATE DATABASE db4');
DtTest::create_model($node, 'db4');
ok(DtTest::wait_workers($node, 'db4', 2), 'db4, created while the server runs, is served');
$node->safe_psql('db4', DtTest::send_sql(300, 50));
send_markers('db4', 4);
DtTest::check_exactly_once($node, 'db4 created while the server runs', 'db4');
is(markers('db4'), 'only_db4:4,same:400', 'db4 sees its own twins only');

# DROP EXTENSION: that database's workers exit
$node->safe_psql('db3', 'DROP EXTENSION digitaltwin');
ok(DtTest::wait_workers($node, 'db3', 0), 'DROP EXTENSION in db3: its workers exit');

# DROP DATABASE without FORCE: the launcher stops its workers first
my ($ret, $err) = run_verbose('postgres', 'DROP DATABASE db4');
is($ret, 0, 'DROP DATABASE of a served database works without FORCE') or diag($err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'db4'}),
	'0', 'db4 is gone');
ok(DtTest::wait_workers($node, 'db4', 0), 'no worker of db4 is left');

# the others streamed all along
foreach my $db (qw(db1 db2))
{
	cmp_ok(sent_count($db), '>', $before{$db}, "$db streamed during these changes");
	stop_stream($stream{$db}, $db);
	DtTest::check_exactly_once($node, "$db streamed through the changes of others", $db);
}
is(markers('db1'), 'only_db1:1,same:100', 'db1 sees its own twins only');
is(markers('db2'), 'only_db2:2,same:200', 'db2 sees its own twins only');

# --- ALTER DATABASE ... RENAME of a served database -----------------------------

my $db2_twins = $node->safe_psql('db2', $live_query);
($ret, $err) = run_verbose('postgres', 'ALTER DATABASE db2 RENAME TO db2r');
is($ret, 0, 'ALTER DATABASE RENAME of a served database works') or diag($err);
ok(DtTest::wait_workers($node, 'db2r', 2), 'the workers serve it under its new name');
is($node->safe_psql('db2r', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'db2r idle');
is($node->safe_psql('db2r', $live_query), $db2_twins, 'db2r: the same twins after the rename');
$node->safe_psql('db2r', DtTest::send_sql(300, 50));
DtTest::check_exactly_once($node, 'db2r after the rename', 'db2r');

# --- CREATE DATABASE ... TEMPLATE of a served database --------------------------

is($node->safe_psql('db1', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'db1 idle');
my $db1_twins = $node->safe_psql('db1', $live_query);
($ret, $err) = run_verbose('postgres', 'CREATE DATABASE db5 TEMPLATE db1');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE of a served database works') or diag($err);
ok(DtTest::wait_workers($node, 'db5', 2), 'the copy is served right after');
ok(DtTest::wait_workers($node, 'db1', 2), 'and so is its template again');
is($node->safe_psql('db5', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'db5 idle');
is($node->safe_psql('db5', $live_query), $db1_twins, 'db5: its twins are db1\'s as of the copy');
# from now on they differ
$node->safe_psql('db5', DtTest::send_sql(300, 60));
send_markers('db5', 5);
$node->safe_psql('db1', DtTest::send_sql(300, 50));
DtTest::check_exactly_once($node, 'db5, a copy of db1', 'db5');
DtTest::check_exactly_once($node, 'db1 after the copy', 'db1');
is(markers('db5'), 'only_db1:1,only_db5:5,same:600', 'db5 has db1\'s twins and its own');
is(markers('db1'), 'only_db1:1,same:100', 'db1 does not see the twins of its copy');

# --- digitaltwin.stats: each database's memory and status -------------------------

my %ntwins = map { $_ => $node->safe_psql($_, 'SELECT count(*) FROM digitaltwin.twins') }
  qw(db1 db2r db5);
is( $node->safe_psql('db1', q{
SELECT string_agg(database || ':' || status || ':' || (memory_bytes > 0) || ':' || twins,
                  ',' ORDER BY database)
FROM digitaltwin.stats WHERE worker IS NULL AND database IN ('db1', 'db2r', 'db5')}),
	"db1:served:true:$ntwins{db1},db2r:served:true:$ntwins{db2r},db5:served:true:$ntwins{db5}",
	'stats: the memory, twins and status of each served database');
is( $node->safe_psql('db5', q{
SELECT count(*) FILTER (WHERE worker IS NOT NULL) || '/' ||
       count(*) FILTER (WHERE worker IS NULL AND database = current_database())
FROM digitaltwin.stats}),
	'2/1', 'stats: a row per worker of the current database and its total');
is( $node->safe_psql('db1', q{
SELECT count(*) FROM digitaltwin.stats WHERE database IN ('db4', 'db2')}),
	'0', 'stats: no row for a dropped or renamed database');

# --- digitaltwin.databases: refusals ---------------------------------------------

$node->safe_psql('postgres', q{ALTER SYSTEM SET digitaltwin.databases = 'db1,db5'});
$node->reload;
ok(DtTest::wait_workers($node, 'db2r', 0), 'db2r, no longer in digitaltwin.databases: its workers exit');
$node->poll_query_until('db1', q{
SELECT status LIKE 'not served: %' FROM digitaltwin.stats
WHERE worker IS NULL AND database = 'db2r'})
  or die 'stats do not say that db2r is not served';
pass('stats say that db2r is not served');
ok($node->log_contains(qr/digitaltwin: database "db2r" is (?:no longer|not) served: /),
	'the log says that db2r is not served');

my $sent_db2r = sent_count('db2r');
($ret, $err) = run_verbose('db2r', q{
BEGIN;
INSERT INTO sent (twin, v) VALUES ('t1', 1);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 't1', '{"v": 1}');
COMMIT;});
isnt($ret, 0, 'an insert into the queue of a database no longer served fails');
like($err, qr/ERROR:  55000: database "db2r" is not served by digitaltwin/,
	'with 55000 and a clear message');
like($err, qr/HINT: .*digitaltwin\.databases/, 'and a hint naming digitaltwin.databases');
($ret, $err) = run_verbose('db2r', q{SELECT digitaltwin.send('acc', 't1', '{"v": 1}')});
like($err, qr/ERROR:  55000: /, 'send() fails likewise');
($ret, $err) = run_verbose('db2r', q{COPY digitaltwin.events (model, twin_id, payload) FROM stdin;
acc	t1	{"v": 1}
\.
});
like($err, qr/ERROR:  55000: /, 'COPY fails likewise');
is(sent_count('db2r'), $sent_db2r, 'nothing was sent');

$node->safe_psql('postgres', 'CREATE DATABASE db6');
($ret, $err) = run_verbose('db6', 'CREATE EXTENSION digitaltwin');
isnt($ret, 0, 'CREATE EXTENSION in a database not in digitaltwin.databases fails');
like($err, qr/ERROR:  55000: database "db6" is not served by digitaltwin/,
	'with 55000 and a clear message');
like($err, qr/HINT: .*digitaltwin\.databases/, 'and a hint naming digitaltwin.databases');
is($node->safe_psql('db6', q{SELECT count(*) FROM pg_extension WHERE extname = 'digitaltwin'}),
	'0', 'db6 has no extension');

# served again once the setting includes it
$node->safe_psql('postgres', 'ALTER SYSTEM RESET digitaltwin.databases');
$node->reload;
ok(DtTest::wait_workers($node, 'db2r', 2), 'db2r is served again after the reset');
$node->safe_psql('db2r', DtTest::send_sql(200, 50));
DtTest::check_exactly_once($node, 'db2r served again', 'db2r');

# --- one database filling its share of the shared memory ------------------------

# digitaltwin.max_memory_per_database = 1MB: a model with 20 kB states fills
# db5's share; the events of db5 that need more are dead-lettered with a
# clear error, and db1 creates twins as large all the same.
my $big_model = q{
CREATE FUNCTION big(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('pad', repeat('x', 20000)) $$;
SELECT digitaltwin.create_model('big', 'big(text,jsonb,jsonb)');
};
$node->safe_psql($_, $big_model) foreach qw(db1 db5);
$node->append_conf('postgresql.conf', "digitaltwin.max_memory_per_database = '1MB'\n");
$node->reload;
# the workers take the reload at their next batch: send until it shows
my $filled = 0;
foreach my $round (1 .. 20)
{
	$node->safe_psql('db5', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'big', 'b$round-' || i, '{}' FROM generate_series(1, 100) i});
	$node->safe_psql('db5', q{SELECT digitaltwin.wait_idle('60s')});
	$filled = $node->safe_psql('db5', q{
SELECT count(*) FROM digitaltwin.dead_letters
WHERE model = 'big' AND sqlstate = '53200'
  AND error LIKE '%shared memory for the twins of database "db5" is exhausted%'});
	last if $filled > 0;
}
cmp_ok($filled, '>', 0, 'db5 past its share: its events that need more memory are dead-lettered');
cmp_ok($node->safe_psql('db5', q{
SELECT memory_bytes FROM digitaltwin.stats WHERE worker IS NULL AND database = 'db5'}),
	'<=', 1024 * 1024 + 200 * 1024, 'db5 stays within its share (plus at most a batch)');
$node->safe_psql('db1', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'big', 'b' || i, '{}' FROM generate_series(1, 20) i});
is($node->safe_psql('db1', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'db1 processed its big twins');
is($node->safe_psql('db1', q{
SELECT (SELECT count(*) FROM digitaltwin.twins WHERE model = 'big') || '/' ||
       (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'big')}),
	'20/0', 'db1, within its own share, is not affected by db5');
$node->append_conf('postgresql.conf', "digitaltwin.max_memory_per_database = 0\n");
$node->reload;
$node->safe_psql($_, q{
SELECT digitaltwin.drop_model('big', force => true);
DROP FUNCTION big(text, jsonb, jsonb);
DELETE FROM digitaltwin.dead_letters WHERE model = 'big';})
  foreach qw(db1 db5);

# --- a restart: every database is served again, its twins intact ------------------

my %twins = map { $_ => $node->safe_psql($_, $live_query) } qw(db1 db2r db5);
my $log_offset = -s $node->logfile;
$node->restart;
foreach my $db (qw(db1 db2r db5))
{
	ok(DtTest::wait_workers($node, $db, 2), "$db: served after the restart");
	is($node->safe_psql($db, q{SELECT digitaltwin.wait_idle('60s')}), 't', "$db: idle");
	is($node->safe_psql($db, $live_query), $twins{$db}, "$db: the same twins after the restart");
}
ok($node->log_contains(qr/digitaltwin: serving database "db2r" with 2 workers/, $log_offset),
	'the log says which databases are served after the restart');
foreach my $db (qw(db3 db6 postgres))
{
	is(DtTest::worker_pids($node, $db), '', "$db (no extension): no worker after the restart");
}
my %s2 = map { $_ => start_stream($_) } qw(db1 db2r db5);
foreach my $db (qw(db1 db2r db5))
{
	my $n = sent_count($db);
	$node->poll_query_until($db, "SELECT count(*) >= $n + 200 FROM sent")
	  or die "no events streamed into $db";
}
foreach my $db (qw(db1 db2r db5))
{
	stop_stream($s2{$db}, $db);
	DtTest::check_exactly_once($node, "$db streaming after the restart", $db);
}
is(markers('db1') . ' ' . markers('db2r') . ' ' . markers('db5'),
	'only_db1:1,same:100 only_db2:2,same:200 only_db1:1,only_db5:5,same:600',
	'after the restart each database still sees its own twins only');
$node->stop;

# --- no free background worker slot -----------------------------------------------

# launcher 1 + 2 workers of one database = 3 of 4 slots: a second database
# cannot get its 2
my $small = DtTest::new_node('small', q{
max_worker_processes = 4
max_logical_replication_workers = 0
max_parallel_workers = 0
});
$small->start;
DtTest::create_model($small, 'postgres');
ok(DtTest::wait_workers($small, 'postgres', 2), 'small node: postgres is served');
$small->safe_psql('postgres', 'CREATE DATABASE b');
($ret, $err) = run_verbose('b', 'CREATE EXTENSION digitaltwin', $small);
isnt($ret, 0, 'CREATE EXTENSION without a free background worker slot fails');
like($err, qr/ERROR:  53400: /, 'with 53400');
like($err, qr/background worker/, 'saying why');
like($err, qr/HINT: .*max_worker_processes/, 'and a hint naming max_worker_processes');
is($small->safe_psql('b', q{SELECT count(*) FROM pg_extension WHERE extname = 'digitaltwin'}),
	'0', 'b has no extension');
$small->safe_psql('postgres', DtTest::send_sql(100, 10));
DtTest::check_exactly_once($small, 'small node: postgres still served');

# Both databases have the extension (room for both), then a restart with
# room for one: the other is refused at start, and its queue refuses events.
$small->append_conf('postgresql.conf', "max_worker_processes = 8\n");
$small->restart;
DtTest::create_model($small, 'b');
ok(DtTest::wait_workers($small, 'b', 2), 'with room for both, b is served');
$small->append_conf('postgresql.conf', "max_worker_processes = 4\n");
$log_offset = -s $small->logfile;
$small->restart;
$small->wait_for_log(qr/digitaltwin: database "(?:postgres|b)" is not served: /, $log_offset);
my ($refused) = slurp_file($small->logfile, $log_offset)
  =~ /digitaltwin: database "(postgres|b)" is not served: /;
my $served = $refused eq 'b' ? 'postgres' : 'b';
ok(DtTest::wait_workers($small, $served, 2), "after a restart with room for one, $served is served");
is(DtTest::worker_pids($small, $refused), '', "$refused is not");
like( $small->safe_psql($served, qq{
SELECT status FROM digitaltwin.stats WHERE worker IS NULL AND database = '$refused'}),
	qr/^not served: /, "stats in $served say that $refused is not served");
($ret, $err) = run_verbose($refused,
	q{INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('acc', 't1', '{"v": 1}')}, $small);
isnt($ret, 0, "an insert into the queue of $refused fails");
like($err, qr/ERROR:  53400: /, 'with 53400');
($ret, $err) = run_verbose($refused, q{SELECT digitaltwin.wait_idle('1s')}, $small);
like($err, qr/ERROR:  53400: /, 'and wait_idle() too');
$small->safe_psql($served, DtTest::send_sql(100, 10));
DtTest::check_exactly_once($small, "small node: $served served", $served);
$small->stop;

# --- more databases than digitaltwin.max_databases ---------------------------------

my $one = DtTest::new_node('one', q{
digitaltwin.max_databases = 1
});
$one->start;
DtTest::create_model($one, 'postgres');
$one->safe_psql('postgres', 'CREATE DATABASE b');
($ret, $err) = run_verbose('b', 'CREATE EXTENSION digitaltwin', $one);
isnt($ret, 0, 'CREATE EXTENSION beyond digitaltwin.max_databases fails');
like($err, qr/ERROR:  53400: .*\n.*max_databases/, 'with 53400, saying why');
like($err, qr/HINT: .*digitaltwin\.max_databases/, 'and a hint naming digitaltwin.max_databases');
# the entry is freed by DROP EXTENSION: then b can have it
$one->safe_psql('postgres', 'DROP EXTENSION digitaltwin CASCADE');
$one->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker'})
  or die 'the workers of postgres did not stop after DROP EXTENSION';
DtTest::create_model($one, 'b');
ok(DtTest::wait_workers($one, 'b', 2), 'once the entry is free, b is served');
$one->safe_psql('b', DtTest::send_sql(100, 10));
DtTest::check_exactly_once($one, 'one entry: b served', 'b');
$one->stop;

done_testing();
