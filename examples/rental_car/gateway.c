/*
 * gateway: delivers the rental car twins' commands to the cars.
 *
 *	  gateway "conninfo" [model [count [idle_seconds]]]
 *
 * Connects (as a member of digitaltwin_gateway: taking needs nothing
 * else), LISTENs on digitaltwin_outbox, and takes the pending commands of
 * the model (default rental_car; "" for every model) with
 * digitaltwin.take_outbox() in a transaction: it prints each one as a line
 *
 *	  car-12 slow_down 90 (speed 112, reading 345)
 *
 * (here the "delivery" to the car), then commits.  A gateway that dies
 * before its commit leaves the commands to the next take: delivery is at
 * least once, and the outbox id lets a car ignore a repeat.
 *
 * It takes at start (commands queued while no gateway ran), on every
 * notification, and once a second without one: a notification is only a
 * hint (anyone may send one, and none comes for commands a rolled-back take
 * left).  It exits after count commands (0: no limit, the default) with
 * status 0, or after idle_seconds (default 30) without a command: status 0
 * when no count was given, else 1.  Progress goes to stderr.
 *
 * Build:
 *	  gcc -o gateway gateway.c -I$(pg_config --includedir) \
 *		  -L$(pg_config --libdir) -lpq
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "libpq-fe.h"

/* commands taken per transaction */
#define TAKE_MAX "100"

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(PGconn *conn, const char *what)
{
	fprintf(stderr, "gateway: %s: %s", what, PQerrorMessage(conn));
	PQfinish(conn);
	exit(2);
}

static void
exec_or_die(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die(conn, sql);
	PQclear(res);
}

/*
 * One transaction: take up to TAKE_MAX commands, deliver (print) them,
 * commit.  Returns how many.
 */
static int
take_and_deliver(PGconn *conn, const char *model)
{
	const char *params[1];
	PGresult   *res;
	int			n;
	int			i;

	exec_or_die(conn, "BEGIN");
	params[0] = model[0] != '\0' ? model : NULL;
	res = PQexecParams(conn,
					   "SELECT coalesce(payload->>'car', twin_id), payload->>'command', "
					   "       payload->>'limit', payload->>'speed', payload->>'reading' "
					   "FROM digitaltwin.take_outbox(" TAKE_MAX ", $1) ORDER BY id",
					   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die(conn, "take_outbox");
	n = PQntuples(res);
	for (i = 0; i < n; i++)
		printf("%s %s %s (speed %s, reading %s)\n",
			   PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
			   PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
	/* delivered before the commit that forgets them */
	fflush(stdout);
	PQclear(res);
	exec_or_die(conn, "COMMIT");
	return n;
}

int
main(int argc, char **argv)
{
	const char *conninfo;
	const char *model = "rental_car";
	long		count = 0;
	double		idle = 30;
	long		got = 0;
	long		notifications = 0;
	double		last;
	PGconn	   *conn;

	if (argc < 2 || argc > 5)
	{
		fprintf(stderr, "usage: %s conninfo [model [count [idle_seconds]]]\n", argv[0]);
		return 2;
	}
	conninfo = argv[1];
	if (argc > 2)
		model = argv[2];
	if (argc > 3)
		count = atol(argv[3]);
	if (argc > 4)
		idle = atof(argv[4]);

	conn = PQconnectdb(conninfo);
	if (PQstatus(conn) != CONNECTION_OK)
		die(conn, "connection failed");
	exec_or_die(conn, "LISTEN digitaltwin_outbox");
	fprintf(stderr, "gateway: listening\n");

	last = now_s();
	for (;;)
	{
		int			n;
		int			sock;
		fd_set		fds;
		struct timeval tv;
		PGnotify   *note;

		/* take until the outbox has no more for us */
		do
		{
			n = take_and_deliver(conn, model);
			got += n;
			if (n > 0)
				last = now_s();
		} while (n == atoi(TAKE_MAX));

		if (count > 0 && got >= count)
			break;
		if (now_s() - last > idle)
		{
			fprintf(stderr, "gateway: idle for %.0f s after %ld commands\n", idle, got);
			PQfinish(conn);
			return count > 0 ? 1 : 0;
		}

		/* sleep until a notification, or a second */
		sock = PQsocket(conn);
		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		tv.tv_sec = 1;
		tv.tv_usec = 0;
		if (select(sock + 1, &fds, NULL, NULL, &tv) < 0)
		{
			perror("gateway: select");
			return 2;
		}
		if (!PQconsumeInput(conn))
			die(conn, "connection lost");
		while ((note = PQnotifies(conn)) != NULL)
		{
			notifications++;
			PQfreemem(note);
		}
	}
	fprintf(stderr, "gateway: %ld commands, %ld notifications\n", got, notifications);
	PQfinish(conn);
	return 0;
}
