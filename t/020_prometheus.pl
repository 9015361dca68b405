# The queries file monitoring/postgres_exporter_queries.yaml, run by
# Debian's prometheus-postgres-exporter as a role that is only a member of
# digitaltwin_reader: every digitaltwin metric it serves on /metrics, for
# each model and each worker, equals what the SQL views say, and the
# counters equal what was sent; a failing worker shows in
# digitaltwin_worker_failing and its error in
# digitaltwin_worker_last_error_info, both gone once it recovers.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use DtTest;
use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $exporter_bin = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "$exporter_bin is missing (scripts/test.sh installs the Debian package)"
  unless -x $exporter_bin;
my $queries = "$FindBin::RealBin/../monitoring/postgres_exporter_queries.yaml";

my $node = DtTest::new_node('prom');
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION digitaltwin;
CREATE ROLE dt_exporter LOGIN;
GRANT digitaltwin_reader TO dt_exporter;
-- counts its events; alerts on "hot", refuses "bad" (a dead letter)
CREATE FUNCTION meter(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'bad' THEN
        RAISE EXCEPTION 'meter refuses %', event->>'bad' USING ERRCODE = '22023';
    END IF;
    IF event ? 'hot' THEN
        PERFORM digitaltwin.alert('warning', 'hot ' || twin_id);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('meter', 'meter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('held', 'meter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('fresh', 'meter(text,jsonb,jsonb)');
});
is( $node->safe_psql('postgres', q{
SELECT string_agg(r.rolname, ',') || '/' || u.rolsuper
FROM pg_roles u JOIN pg_auth_members a ON a.member = u.oid JOIN pg_roles r ON r.oid = a.roleid
WHERE u.rolname = 'dt_exporter' GROUP BY u.rolsuper}),
	'digitaltwin_reader/false', "the exporter's role is a member of digitaltwin_reader only");

# What is sent, counted here: event i of 1..300 goes to twin m(i % 20), is
# bad when i % 25 = 0, else hot when i % 7 = 0.
my ($sent, $bad, $hot) = (300, 0, 0);
foreach my $i (1 .. $sent)
{
	if ($i % 25 == 0) { $bad++ }
	elsif ($i % 7 == 0) { $hot++ }
}
$node->safe_psql('postgres', qq{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'meter', 'm' || (i % 20),
       CASE WHEN i % 25 = 0 THEN jsonb_build_object('bad', i)
            WHEN i % 7 = 0 THEN '{"hot": true}'
            ELSE '{}' END
FROM generate_series(1, $sent) i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'held', 'h' || i, '{}' FROM generate_series(1, 4) i;
});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'the events were consumed');
# 5 events held by a paused model: its queue depth and oldest event age
$node->safe_psql('postgres', q{SELECT digitaltwin.pause_model('held')});
$node->safe_psql('postgres', q{
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'held', 'h1', '{}' FROM generate_series(1, 5)});
is($node->safe_psql('postgres', q{SELECT count(*) FROM digitaltwin.held_events}), '5',
	'5 events are held');

# The exporter, on a port of its own (a daemon started by the package
# would have 9187), connected over the node's Unix socket; only the
# metrics of the queries file.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $exporter_log = $node->basedir . '/exporter.log';
my $exporter;
{
	local $ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port
	  . ' user=dt_exporter dbname=postgres sslmode=disable';
	$exporter = IPC::Run::start(
		[
			$exporter_bin, "--extend.query-path=$queries",
			"--web.listen-address=127.0.0.1:$port", '--disable-default-metrics',
			'--disable-settings-metrics', '--no-collector.database',
			'--no-collector.bgwriter'
		],
		'>', $exporter_log, '2>&1');
}
END { eval { $exporter->kill_kill if $exporter } }

my $http = HTTP::Tiny->new(timeout => 10);
sub exporter_log { return "exporter:\n" . slurp_file($exporter_log) }
my $url = "http://127.0.0.1:$port/metrics";

# The samples of /metrics: {name}{labels} = value, labels as
# "k=v,k=v" sorted, without "server" (the exporter's own: host:port);
# every digitaltwin sample is checked to be of database "postgres".  And
# the type of each metric.
sub scrape
{
	my $res = $http->get($url);
	die "GET $url: $res->{status} $res->{reason}\n$res->{content}\n" . exporter_log()
	  unless $res->{success};
	my (%samples, %types);
	foreach my $line (split /\n/, $res->{content})
	{
		if ($line =~ /^# TYPE (\S+) (\S+)$/)
		{
			$types{$1} = $2;
			next;
		}
		next if $line =~ /^#/ || $line eq '';
		$line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
		  or die "cannot parse: $line";
		my ($name, $labels, $value) = ($1, $2 // '', $3);
		my %l;
		while ($labels =~ /\G([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc)
		{
			my ($k, $v) = ($1, $2);
			$v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
			$l{$k} = $v;
		}
		die "cannot parse labels: $line" if ($labels =~ /\G(.+)/gc);
		delete $l{server};
		if ($name =~ /^digitaltwin_/)
		{
			die "$name of database " . ($l{database} // 'none') . ": $line"
			  unless ($l{database} // '') eq 'postgres';
			delete $l{database};
		}
		$samples{$name}{ join(',', map { "$_=$l{$_}" } sort keys %l) } = $value;
	}
	return (\%samples, \%types);
}

# Wait for the exporter to answer (it connects at the first scrape).
my $deadline = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
my $first;
while (1)
{
	my $res = $http->get($url);
	if ($res->{success} && $res->{content} =~ /^pg_up 1$/m)
	{
		$first = $res->{content};
		last;
	}
	die "the exporter did not answer on $url: "
	  . ($res->{status} == 599 ? $res->{content} : $res->{status}) . "\n" . exporter_log()
	  if Time::HiRes::time() > $deadline || !$exporter->pumpable;
	Time::HiRes::usleep(100_000);
}
like($first, qr/^pg_exporter_user_queries_load_error\{[^}]*\} 0$/m, 'the queries file loads');

# What each metric is in the views.  exact: equal; close: equal but for
# the rounding of floating point; moving: a gauge that moves with time
# alone (an age, a rate), between what two readings around the scrape say.
my @model_metrics = (
	[ events_processed_total   => 'counter', exact  => 's.events_processed' ],
	[ dead_letters_total       => 'counter', exact  => 's.dead_letters' ],
	[ alerts_total             => 'counter', exact  => 's.alerts' ],
	[ calls_total              => 'counter', exact  => 's.model_calls' ],
	[ time_seconds_total       => 'counter', close  => 'coalesce(s.model_time_avg * s.model_calls, 0) / 1000' ],
	[ time_avg_seconds         => 'gauge',   close  => 'coalesce(s.model_time_avg, 0) / 1000' ],
	[ time_max_seconds         => 'gauge',   close  => 'coalesce(s.model_time_max, 0) / 1000' ],
	[ twins                    => 'gauge',   exact  => 's.twins' ],
	[ queue_depth              => 'gauge',   exact  => 's.queue_depth' ],
	[ oldest_event_age_seconds => 'gauge',   moving => q{coalesce(extract(epoch FROM s.oldest_event_age), 0)} ],
	[ events_per_second        => 'gauge',   moving => 's.events_per_second' ],
	[ events_in_flight         => 'gauge',   exact  => 's.events_in_flight' ],
	[ paused                   => 'gauge',   exact  => 'CASE WHEN s.paused THEN 1 ELSE 0 END' ],
);
my @worker_metrics = (
	[ events_processed_total => 'counter', exact  => 's.events_processed' ],
	[ batches_total          => 'counter', exact  => 'w.batches' ],
	[ events_per_second      => 'gauge',   moving => 's.events_per_second' ],
	[ twins                  => 'gauge',   exact  => 's.twins' ],
	[ memory_bytes           => 'gauge',   exact  => 's.memory_bytes' ],
	[ failing                => 'gauge',   exact  => 'CASE WHEN s.last_error IS NULL THEN 0 ELSE 1 END' ],
);
my %kind;
$kind{"digitaltwin_model_$_->[0]"} = $_ for @model_metrics;
$kind{"digitaltwin_worker_$_->[0]"} = $_ for @worker_metrics;
$kind{digitaltwin_worker_last_error_info} = [ info => 'gauge', 'exact' ];

# The views, read as the metrics are named: {metric}{labels} = value.
sub views
{
	my %v;
	my $sep = "\x1f";
	foreach my $q (
		[ 'digitaltwin_model_', 'model', \@model_metrics, 'digitaltwin.model_stats s' ],
		[
			'digitaltwin_worker_', 'worker', \@worker_metrics,
			'digitaltwin.stats s JOIN digitaltwin.worker_stats() w ON w.worker = s.worker'
		])
	{
		my ($prefix, $key, $metrics, $from) = @$q;
		my $rows = $node->safe_psql('postgres',
			"SELECT concat_ws(E'$sep', s.$key, "
			  . join(', ', map { "coalesce(($_->[3])::float8::text, 'NaN')" } @$metrics)
			  . ") FROM $from WHERE s.$key IS NOT NULL");
		foreach my $row (split /\n/, $rows)
		{
			my ($k, @values) = split /$sep/, $row;
			$v{ $prefix . $metrics->[$_][0] }{"$key=$k"} = $values[$_] for 0 .. $#$metrics;
		}
	}
	my $errors = $node->safe_psql('postgres', qq{
SELECT concat_ws(E'$sep', worker, substr(last_error, 1, 100)) FROM digitaltwin.stats
WHERE worker IS NOT NULL AND last_error IS NOT NULL});
	foreach my $row (split /\n/, $errors)
	{
		my ($w, $e) = split /$sep/, $row;
		$v{digitaltwin_worker_last_error_info}{"error=$e,worker=$w"} = 1;
	}
	return \%v;
}

# What differs between the scrape and the views read before and after it:
# one list of differences per metric.
sub differences
{
	my ($before, $scraped, $after) = @_;
	my %diff;
	my %names = map { $_ => 1 } grep { /^digitaltwin_/ } keys %$before, keys %$scraped;
	foreach my $name (sort keys %names)
	{
		my $how = $kind{$name};
		unless ($how)
		{
			push @{ $diff{$name} }, 'a metric of no view';
			next;
		}
		my $kind = $how->[2];
		my %keys = map { $_ => 1 } keys %{ $before->{$name} // {} }, keys %{ $scraped->{$name} // {} };
		foreach my $k (sort keys %keys)
		{
			my ($b, $s, $a) = map { exists $_->{$name} ? $_->{$name}{$k} : undef } $before, $scraped, $after;
			if (!defined $s || !defined $b || !defined $a)
			{
				push @{ $diff{$name} }, "$k: " . join(' ', map { $_ // 'none' } $b, $s, $a);
				next;
			}
			my $ok =
			    $kind eq 'exact' ? $b == $a && $s == $b
			  : $kind eq 'close' ? $b == $a && abs($s - $b) <= 1e-9 * abs($b) + 1e-12
			  :   $s >= ($b < $a ? $b : $a) - 1e-6 && $s <= ($b > $a ? $b : $a) + 1e-6;
			push @{ $diff{$name} }, "$k: views $b and $a, /metrics $s" unless $ok;
		}
	}
	return \%diff;
}

# Scrape until a scrape agrees with the views around it (a batch, a
# worker's reload may move them), and test each metric against that
# reading; the samples of the last scrape are returned.
sub check_against_views
{
	my ($what) = @_;
	my $until = Time::HiRes::time() + 15;
	my ($diff, $samples, $types, $views);
	while (1)
	{
		my $before = views();
		($samples, $types) = scrape();
		$views = views();
		$diff = differences($before, $samples, $views);
		last if !%$diff || Time::HiRes::time() > $until;
		note("$what: the views moved during the scrape, again");
		Time::HiRes::usleep(200_000);
	}
	foreach my $name (sort keys %kind)
	{
		next unless exists $views->{$name} || exists $samples->{$name} || exists $diff->{$name};
		ok(!$diff->{$name}, "$what: $name equals the views for "
			  . join(' ', sort keys %{ $views->{$name} // {} }))
		  or diag(join("\n", @{ $diff->{$name} }));
	}
	my @served = grep { /^digitaltwin_/ && $kind{$_} } keys %$samples;
	is_deeply({ map { $_ => $types->{$_} } @served }, { map { $_ => $kind{$_}[1] } @served },
		"$what: the counters and gauges are typed so");
	ok(!$diff->{$_}, "$what: $_") foreach grep { !$kind{$_} } sort keys %$diff;
	is($samples->{pg_exporter_last_scrape_error}{''}, 0, "$what: the scrape had no error")
	  or diag(exporter_log());
	return $samples;
}

my $m = check_against_views('quiet');
is(scalar(keys %{ $m->{digitaltwin_model_events_processed_total} }), 3, 'a series per model');
is(scalar(keys %{ $m->{digitaltwin_worker_batches_total} }), 2, 'a series per worker');
is($m->{digitaltwin_model_events_processed_total}{'model=meter'}, $sent, 'meter: every event sent');
is($m->{digitaltwin_model_dead_letters_total}{'model=meter'}, $bad, 'meter: its bad events dead');
is($m->{digitaltwin_model_alerts_total}{'model=meter'}, $hot, 'meter: an alert per hot event');
is($m->{digitaltwin_model_twins}{'model=meter'}, 20, 'meter: 20 twins');
cmp_ok($m->{digitaltwin_model_time_max_seconds}{'model=meter'}, '>', 0, 'meter: calls took time');
is(join('/', map { $m->{"digitaltwin_model_$_"}{'model=held'} } qw(events_processed_total queue_depth paused)),
	'4/5/1', 'held: 4 events consumed, 5 held, paused');
cmp_ok($m->{digitaltwin_model_oldest_event_age_seconds}{'model=held'}, '>', 0, 'held: its oldest event waits');
is(join('/', map { $m->{"digitaltwin_model_$_"}{'model=fresh'} }
	  qw(events_processed_total calls_total time_avg_seconds twins oldest_event_age_seconds)),
	'0/0/0/0/0', 'fresh: zeros');
my $applied = 0;
$applied += $_ for values %{ $m->{digitaltwin_worker_events_processed_total} };
is($applied, $sent - $bad + 4, 'the workers applied every event but the dead');
ok(!exists $m->{digitaltwin_worker_last_error_info}, 'no worker is failing');

# A worker whose batches fail: a trigger refuses the statistics every
# batch writes, and one event goes to that worker.
my $worker = $node->safe_psql('postgres', q{SELECT digitaltwin.partition_of('x', 2)});
$node->safe_psql('postgres', q{
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'counters refused by the test';
END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON digitaltwin.model_counters
    FOR EACH ROW EXECUTE FUNCTION refuse();
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('meter', 'x', '{}');
});
$node->poll_query_until('postgres',
	"SELECT last_error IS NOT NULL FROM digitaltwin.stats WHERE worker = $worker")
  or die 'the worker did not fail';
$m = check_against_views('failing');
is($m->{digitaltwin_worker_failing}{"worker=$worker"}, 1, 'the failing worker is failing');
is($m->{digitaltwin_worker_failing}{ 'worker=' . (1 - $worker) }, 0, 'the other is not');
is_deeply($m->{digitaltwin_worker_last_error_info},
	{ "error=counters refused by the test,worker=$worker" => 1 },
	'its error is the label of digitaltwin_worker_last_error_info');
is($m->{digitaltwin_model_queue_depth}{'model=meter'}, 1, 'its event waits');

$node->safe_psql('postgres', q{DROP TRIGGER refuse ON digitaltwin.model_counters});
is($node->safe_psql('postgres', q{SELECT digitaltwin.wait_idle('60s')}), 't', 'the worker recovers');
$m = check_against_views('recovered');
is($m->{digitaltwin_worker_failing}{"worker=$worker"}, 0, 'the worker is not failing any more');
ok(!exists $m->{digitaltwin_worker_last_error_info}, 'and its error series is gone');
is($m->{digitaltwin_model_events_processed_total}{'model=meter'}, $sent + 1, 'meter: the event counts');

$exporter->kill_kill;
$node->stop;
done_testing();
