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
 *
 * Anyone who can connect to the database can NOTIFY digitaltwin_alerts
 * with any payload: PostgreSQL has no privilege on channels.  So a
 * notification is only a hint: each one is confirmed by reading the alert
 * by its id in digitaltwin.alerts, with the model, twin and severity the
 * payload claims, and what is printed comes from the table.  A payload
 * that is not JSON, or names no such alert, is counted apart as ignored.
 * (The connecting role must be able to read digitaltwin.alerts, e.g. a
 * member of digitaltwin_reader.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "libpq-fe.h"

/*
 * The server parses the payload (jsonb), so that a forged payload cannot
 * confuse a parser here; an invalid one is an error, i.e. not confirmed.
 */
#define CONFIRM_SQL \
	"SELECT a.id, a.model, a.twin_id, a.severity, a.message " \
	"FROM digitaltwin.alerts a, " \
	"     pg_catalog.jsonb_to_record($1::pg_catalog.jsonb) " \
	"         AS p(id bigint, model text, twin_id text, severity text) " \
	"WHERE a.id OPERATOR(pg_catalog.=) p.id " \
	"  AND a.model OPERATOR(pg_catalog.=) p.model " \
	"  AND a.twin_id OPERATOR(pg_catalog.=) p.twin_id " \
	"  AND a.severity OPERATOR(pg_catalog.=) p.severity"

/*
 * Look the notified alert up in digitaltwin.alerts.  Returns 1 and prints
 * it (from the table) if found, 0 if not; -1 if the connection failed.
 */
static int
confirm_alert(PGconn *conn, const char *payload, int print)
{
	const char *params[1] = {payload};
	PGresult   *res = PQexecParams(conn, CONFIRM_SQL, 1, NULL, params,
								   NULL, NULL, 0);
	int			found = 0;

	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		found = PQntuples(res) == 1;
		if (found && print)
			printf("  ALERT id=%s model=%s twin=%s severity=%s: %s\n",
				   PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
				   PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3),
				   PQgetvalue(res, 0, 4));
	}
	else if (PQstatus(conn) != CONNECTION_OK)
		found = -1;
	PQclear(res);
	return found;
}

int
main(int argc, char **argv)
{
	PGconn	   *conn;
	PGresult   *res;
	long		received = 0;
	long		ignored = 0;
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
			int			found;

			if (strcmp(n->relname, "digitaltwin_demo_done") == 0)
			{
				PQfreemem(n);
				printf("  ... %ld alerts received by NOTIFY", received);
				if (ignored > 0)
					printf(" (%ld notifications ignored: no such alert in digitaltwin.alerts)",
						   ignored);
				printf("\n");
				PQfinish(conn);
				return 0;
			}
			found = confirm_alert(conn, n->extra, received < max_printed);
			PQfreemem(n);
			if (found < 0)
			{
				fprintf(stderr, "listen_alerts: %s", PQerrorMessage(conn));
				return 1;
			}
			if (!found)
			{
				ignored++;
				continue;
			}
			received++;
			if (received == max_printed + 1)
				printf("  (further alerts counted, not printed)\n");
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
