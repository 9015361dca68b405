/*
 * listen_alerts: print digitaltwin alerts as their NOTIFY arrives.
 *
 *	  listen_alerts "conninfo" max_printed
 *
 * LISTENs on digitaltwin_alerts and prints the first max_printed alerts in
 * full, then one line per second with the running count.  Stops when a
 * NOTIFY arrives on channel digitaltwin_demo_done: notifications are
 * delivered in commit order, so every alert committed before it has been
 * received by then.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "libpq-fe.h"

int
main(int argc, char **argv)
{
	PGconn	   *conn;
	PGresult   *res;
	long		received = 0;
	long		max_printed;
	time_t		last_report = time(NULL);

	if (argc != 3)
	{
		fprintf(stderr, "usage: %s conninfo max_printed\n", argv[0]);
		return 2;
	}
	max_printed = atol(argv[2]);
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "listen_alerts: %s", PQerrorMessage(conn));
		return 1;
	}
	res = PQexec(conn, "LISTEN digitaltwin_alerts; LISTEN digitaltwin_demo_done");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "listen_alerts: %s", PQerrorMessage(conn));
		return 1;
	}
	PQclear(res);
	printf("listening on digitaltwin_alerts\n");
	fflush(stdout);

	for (;;)
	{
		PGnotify   *n;
		fd_set		fds;
		struct timeval tv = {1, 0};
		int			sock = PQsocket(conn);

		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		if (select(sock + 1, &fds, NULL, NULL, &tv) < 0)
			break;
		if (!PQconsumeInput(conn))
		{
			fprintf(stderr, "listen_alerts: %s", PQerrorMessage(conn));
			return 1;
		}
		while ((n = PQnotifies(conn)) != NULL)
		{
			if (strcmp(n->relname, "digitaltwin_demo_done") == 0)
			{
				PQfreemem(n);
				printf("  ... %ld alerts received by NOTIFY\n", received);
				PQfinish(conn);
				return 0;
			}
			received++;
			if (received <= max_printed)
				printf("  ALERT %s\n", n->extra);
			else if (received == max_printed + 1)
				printf("  (further alerts counted, not printed)\n");
			PQfreemem(n);
		}
		if (received > max_printed && time(NULL) != last_report)
		{
			printf("  ... %ld alerts so far\n", received);
			last_report = time(NULL);
		}
		fflush(stdout);
	}
	PQfinish(conn);
	return 1;
}
