/*
 * alert_latency: time from the commit of an event that raises an alert to
 * the arrival of its NOTIFY digitaltwin_alerts at a listening client.
 *
 *	  alert_latency "conninfo" model events_per_second count
 *
 * One connection listens; another inserts one alert-raising event at a
 * time (payload {"bpm": 250}: above any limit, still plausible) at the
 * given rate, in autocommit.  Two latencies per probe: from the moment the
 * INSERT is sent (so including the insert and its commit, WAL flush and
 * all), and from the moment the client got the commit acknowledgement (the
 * worker, woken at commit, often has the alert out before the client has
 * even read that acknowledgement: then this one is 0).  Prints p50, p90,
 * p99 and max of both, in milliseconds, and the INSERT's own round trip
 * (sent to commit acknowledged), the floor: an alert follows its event's
 * commit, whose WAL flush is most of that round trip.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "libpq-fe.h"

#include "latency.h"

/*
 * Wait up to timeout_ms for the notification of a probe alert (other
 * alerts raised by the background load are skipped); returns its arrival
 * time.
 */
static double
wait_notify(PGconn *listener, double timeout_ms)
{
	double		deadline = now_ms() + timeout_ms;

	for (;;)
	{
		PGnotify   *n;
		fd_set		fds;
		struct timeval tv;
		double		left;
		int			sock = PQsocket(listener);

		PQconsumeInput(listener);
		while ((n = PQnotifies(listener)) != NULL)
		{
			double		t = now_ms();
			bool		probe = strstr(n->extra, "\"twin_id\": \"latency-probe\"") != NULL;

			PQfreemem(n);
			if (probe)
				return t;
		}
		left = deadline - now_ms();
		if (left <= 0)
			return -1;
		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		tv.tv_sec = (long) (left / 1000);
		tv.tv_usec = (long) ((left - tv.tv_sec * 1000) * 1000);
		select(sock + 1, &fds, NULL, NULL, &tv);
	}
}

int
main(int argc, char **argv)
{
	const char *conninfo;
	const char *model;
	double		rate;
	int			count;
	PGconn	   *listener;
	PGconn	   *sender;
	double	   *lat;
	double	   *lat_sent;
	double	   *lat_commit;
	int			got = 0;
	int			i;
	char		sql[512];

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s conninfo model events_per_second count\n", argv[0]);
		return 2;
	}
	conninfo = argv[1];
	model = argv[2];
	rate = atof(argv[3]);
	count = atoi(argv[4]);
	lat = calloc(count, sizeof(double));
	lat_sent = calloc(count, sizeof(double));
	lat_commit = calloc(count, sizeof(double));

	listener = connect_or_die(conninfo);
	sender = connect_or_die(conninfo);
	PQclear(exec_or_die(listener, "LISTEN digitaltwin_alerts"));
	snprintf(sql, sizeof(sql),
			 "INSERT INTO digitaltwin.events (model, twin_id, payload) "
			 "VALUES ('%s', 'latency-probe', '{\"bpm\": 250}')", model);

	for (i = 0; i < count; i++)
	{
		double		start = now_ms();
		double		committed;
		double		arrived;

		PQclear(exec_or_die(sender, sql));
		committed = now_ms();
		arrived = wait_notify(listener, 5000);
		if (arrived < 0)
		{
			fprintf(stderr, "no notification within 5 s for event %d\n", i);
			continue;
		}
		lat_sent[got] = arrived - start;
		lat_commit[got] = committed - start;
		lat[got++] = arrived > committed ? arrived - committed : 0;
		/* pace the probes at the requested rate */
		if (rate > 0)
		{
			double		left = 1000.0 / rate - (now_ms() - start);

			if (left > 0)
			{
				struct timespec ts;

				ts.tv_sec = (time_t) (left / 1000);
				ts.tv_nsec = (long) ((left - ts.tv_sec * 1000) * 1e6);
				nanosleep(&ts, NULL);
			}
		}
	}

	if (got == 0)
	{
		printf("no notifications received\n");
		return 1;
	}
	qsort(lat, got, sizeof(double), cmp_double);
	qsort(lat_sent, got, sizeof(double), cmp_double);
	qsort(lat_commit, got, sizeof(double), cmp_double);
	printf("alerts %d; from INSERT sent: p50 %.2f ms p90 %.2f ms p99 %.2f ms max %.2f ms; "
		   "from commit acknowledged: p50 %.2f ms p99 %.2f ms; "
		   "the INSERT's own commit round trip (the floor): p50 %.2f ms p99 %.2f ms\n",
		   got, lat_sent[got / 2], lat_sent[(int) (got * 0.9)],
		   lat_sent[(int) (got * 0.99)], lat_sent[got - 1],
		   lat[got / 2], lat[(int) (got * 0.99)],
		   lat_commit[got / 2], lat_commit[(int) (got * 0.99)]);
	PQfinish(listener);
	PQfinish(sender);
	return 0;
}
