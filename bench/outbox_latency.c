/*
 * outbox_latency: time from the commit of an event whose model sends a
 * command to its data source (digitaltwin.send_to_source) to the moment a
 * gateway has that command.
 *
 *	  outbox_latency "conninfo" model events_per_second count senders
 *
 * 'senders' processes insert one event at a time, in autocommit, payload
 * {"seq": i}, paced together at the given rate (event i is due at
 * start + i / rate, so a sender that fell behind catches up instead of
 * lowering the rate).  The model is expected to send {"seq": i} back with
 * send_to_source().  The gateway, in this process, does what a real one
 * does (as alert_latency.c listens for alerts): LISTEN digitaltwin_outbox,
 * and at each wake-up BEGIN; SELECT ... FROM digitaltwin.take_outbox(1000,
 * model); COMMIT.  A command is "had" when the SELECT returned it; also
 * reported: when the take committed.  Latencies are from the moment the
 * sender got its commit acknowledgement (0 when the gateway was faster
 * than the sender reading its acknowledgement), and from the moment the
 * INSERT was sent.  Prints p50, p90, p99 and max in milliseconds, and the
 * rate achieved; also, to tell the worker's share from the gateway's, from
 * the commit acknowledgement to the gateway's wake-up by the NOTIFY (for a
 * row taken after a wake-up by an earlier row's NOTIFY, that one).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

#include "latency.h"

/* sender k of n: events k, k + n, k + 2n, ... */
static void
sender(const char *conninfo, const char *model, double rate, int count,
	   int k, int n, double start, double *sent, double *acked)
{
	PGconn	   *conn = connect_or_die(conninfo);
	char		sql[512];
	int			i;

	for (i = k; i < count; i += n)
	{
		sleep_until(start + i * 1000.0 / rate);
		snprintf(sql, sizeof(sql),
				 "INSERT INTO digitaltwin.events (model, twin_id, payload) "
				 "VALUES ('%s', 'car-%d', '{\"seq\": %d}')", model, i % 1000, i);
		sent[i] = now_ms();
		PQclear(exec_or_die(conn, sql));
		acked[i] = now_ms();
	}
	PQfinish(conn);
}

static void
report(const char *what, double *lat, int n)
{
	qsort(lat, n, sizeof(double), cmp_double);
	printf("%s: p50 %.2f ms p90 %.2f ms p99 %.2f ms max %.2f ms",
		   what, lat[n / 2], lat[(int) (n * 0.9)], lat[(int) (n * 0.99)], lat[n - 1]);
}

int
main(int argc, char **argv)
{
	const char *conninfo;
	const char *model;
	double		rate;
	int			count;
	int			nsenders;
	double	   *sent;
	double	   *acked;
	double	   *had;
	double	   *taken;
	double	   *noted;
	double	   *lat;
	double		start;
	double		deadline;
	int			got = 0;
	int			dup = 0;
	int			k;
	int			i;
	int			n;
	PGconn	   *gw;
	char		take[512];

	if (argc != 6)
	{
		fprintf(stderr, "usage: %s conninfo model events_per_second count senders\n", argv[0]);
		return 2;
	}
	conninfo = argv[1];
	model = argv[2];
	rate = atof(argv[3]);
	count = atoi(argv[4]);
	nsenders = atoi(argv[5]);

	/* shared with the senders (fork): the clock is the same for all */
	sent = mmap(NULL, sizeof(double) * count * 2, PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sent == MAP_FAILED)
	{
		perror("mmap");
		return 1;
	}
	acked = sent + count;
	had = calloc(count, sizeof(double));
	taken = calloc(count, sizeof(double));
	noted = calloc(count, sizeof(double));
	lat = calloc(count, sizeof(double));

	gw = connect_or_die(conninfo);
	PQclear(exec_or_die(gw, "LISTEN digitaltwin_outbox"));
	/* anything left from before is not ours */
	snprintf(take, sizeof(take),
			 "SELECT (payload->>'seq')::int FROM digitaltwin.take_outbox(1000, '%s')", model);
	for (;;)
	{
		PGresult   *res = exec_or_die(gw, take);

		n = PQntuples(res);
		PQclear(res);
		if (n == 0)
			break;
	}

	start = now_ms() + 200;
	for (k = 0; k < nsenders; k++)
	{
		if (fork() == 0)
		{
			sender(conninfo, model, rate, count, k, nsenders, start, sent, acked);
			_exit(0);
		}
	}

	deadline = start + count * 1000.0 / rate + 10000;
	while (got < count && now_ms() < deadline)
	{
		int			sock = PQsocket(gw);
		fd_set		fds;
		struct timeval tv = {0, 100000};
		PGnotify   *note;
		bool		woken = false;
		PGresult   *res;
		double		t_had;
		double		t_taken;
		double		t_noted;
		int			seqs[1000];

		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		if (select(sock + 1, &fds, NULL, NULL, &tv) < 0)
			continue;
		PQconsumeInput(gw);
		while ((note = PQnotifies(gw)) != NULL)
		{
			woken = true;
			PQfreemem(note);
		}
		if (!woken)
			continue;
		t_noted = now_ms();
		/*
		 * take until empty: several commits may be behind one wake-up (a
		 * notification that comes during the take wakes us again, even if
		 * its row was taken: dropping it could leave a row behind)
		 */
		do
		{
			PQclear(exec_or_die(gw, "BEGIN"));
			res = exec_or_die(gw, take);
			t_had = now_ms();
			n = PQntuples(res);
			for (i = 0; i < n; i++)
				seqs[i] = atoi(PQgetvalue(res, i, 0));
			PQclear(res);
			PQclear(exec_or_die(gw, "COMMIT"));
			t_taken = now_ms();
			for (i = 0; i < n; i++)
			{
				int			s = seqs[i];

				if (s < 0 || s >= count)
					continue;
				if (had[s] != 0)
				{
					dup++;
					continue;
				}
				had[s] = t_had;
				taken[s] = t_taken;
				noted[s] = t_noted;
				got++;
			}
		} while (n == 1000);
	}
	for (k = 0; k < nsenders; k++)
		wait(NULL);

	if (got == 0)
	{
		printf("no commands received\n");
		return 1;
	}
	{
		double		last = 0;

		for (i = 0; i < count; i++)
			if (acked[i] > last)
				last = acked[i];
		printf("commands %d of %d (%d duplicates) sent at %.0f/s; ", got, count, dup,
			   count * 1000.0 / (last - start));
	}
	n = 0;
	for (i = 0; i < count; i++)
		if (had[i] != 0)
			lat[n++] = had[i] > acked[i] ? had[i] - acked[i] : 0;
	report("commit acknowledged to gateway has it", lat, n);
	printf("; ");
	n = 0;
	for (i = 0; i < count; i++)
		if (had[i] != 0)
			lat[n++] = had[i] - sent[i];
	report("INSERT sent to gateway has it", lat, n);
	printf("; ");
	n = 0;
	for (i = 0; i < count; i++)
		if (had[i] != 0)
			lat[n++] = taken[i] > acked[i] ? taken[i] - acked[i] : 0;
	report("commit acknowledged to take committed", lat, n);
	printf("; ");
	n = 0;
	for (i = 0; i < count; i++)
		if (had[i] != 0)
			lat[n++] = noted[i] > acked[i] ? noted[i] - acked[i] : 0;
	report("of which commit acknowledged to NOTIFY received", lat, n);
	printf("\n");
	PQfinish(gw);
	return got == count ? 0 : 1;
}
