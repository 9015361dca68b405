/*
 * latency.h: what the latency benchmarks (alert_latency.c, outbox_latency.c)
 * share: a monotonic clock in milliseconds, pacing, sorting the samples,
 * and libpq calls that give up on the first error.
 */
#ifndef DT_BENCH_LATENCY_H
#define DT_BENCH_LATENCY_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "libpq-fe.h"

static inline double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* sleep until now_ms() reaches t */
static inline void
sleep_until(double t)
{
	double		left = t - now_ms();

	if (left > 0)
	{
		struct timespec ts;

		ts.tv_sec = (time_t) (left / 1000);
		ts.tv_nsec = (long) ((left - ts.tv_sec * 1000) * 1e6);
		nanosleep(&ts, NULL);
	}
}

/* qsort comparator of doubles, ascending */
static inline int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

static inline PGconn *
connect_or_die(const char *conninfo)
{
	PGconn	   *conn = PQconnectdb(conninfo);

	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "connection failed: %s", PQerrorMessage(conn));
		exit(1);
	}
	return conn;
}

/* the result, for the caller to PQclear */
static inline PGresult *
exec_or_die(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "%s: %s", sql, PQerrorMessage(conn));
		exit(1);
	}
	return res;
}

#endif							/* DT_BENCH_LATENCY_H */
