# The cookbook cannot rot: every SQL snippet of docs/patterns.md is in the
# regression test sql/patterns.sql, verbatim and in the same order, so that
# each one runs (and its results are checked) with the suite.
use strict;
use warnings;

use Test::More;

sub slurp
{
	my ($path) = @_;
	open(my $fh, '<', $path) or die "cannot open $path: $!";
	local $/;
	my $text = <$fh>;
	close($fh);
	return $text;
}

my $doc = slurp('docs/patterns.md');
my $test = slurp('sql/patterns.sql');
my @snippets = ($doc =~ /```sql\n(.*?)```/gs);

cmp_ok(scalar(@snippets), '>=', 10, 'the cookbook has its snippets');
my $from = 0;
foreach my $i (0 .. $#snippets)
{
	my $at = index($test, $snippets[$i], $from);
	my ($first) = split(/\n/, $snippets[$i]);
	ok($at >= 0, "snippet " . ($i + 1) . " runs in sql/patterns.sql, in order: $first");
	$from = $at + length($snippets[$i]) if $at >= 0;
}

done_testing();
