/*-------------------------------------------------------------------------
 *
 * partitions.c
 *	  The time partitions of digitaltwin.event_log and
 *	  digitaltwin.state_history: created ahead, dropped whole once older
 *	  than the longest keep of the models that use the table.
 *
 * Worker 0 maintains them between batches, once a second, in a
 * transaction of its own (as it rotates the queue).  Each step (creating
 * one partition, dropping one) runs in a subtransaction under a short
 * lock_timeout: attaching a partition and dropping one lock the parent,
 * which the batches writing to it hold too, and a step that cannot have
 * its lock at once is simply tried again a second later.  Until the
 * partition of the current period exists (the first moments after
 * set_event_log(), or a lock that was not granted) rows go to the DEFAULT
 * partition; a new partition takes the rows of its period from there
 * before it is attached, as ATTACH PARTITION requires.
 *
 * The partitions are created by the worker, so they are not members of
 * the extension: pg_dump saves them, their rows and their attachment like
 * any table of the user's (and log_partitions, a configuration table,
 * with them).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

/* a table partitioned by time, and the models column saying how long */
typedef struct DtLogTable
{
	const char *name;
	const char *key;			/* its partition key */
	const char *keep;			/* column of digitaltwin.models */
	bool		carry;			/* carry each twin's last state forward */
	const char *index;			/* columns of each partition's index, if any */
} DtLogTable;

static const DtLogTable log_tables[] = {
	{"event_log", "logged_at", "event_log_keep", false, NULL},
	{"state_history", "valid_from", "history_keep", true, "model_id, twin_id, valid_from"},
};

static TimestampTz last_maintenance = 0;

/* one step of the maintenance of a table, for dt_run_guarded() */
typedef struct DtPartitionStep
{
	void		(*step) (const DtLogTable *t, void *arg);
	const DtLogTable *t;
	void	   *arg;
} DtPartitionStep;

static void
dt_partition_run_step(void *arg)
{
	DtPartitionStep *s = arg;

	s->step(s->t, s->arg);
}

/*
 * Run one step in a subtransaction with a short lock_timeout; false if it
 * failed (logged), and nothing of it remains.
 */
static bool
dt_partition_step(void (*step) (const DtLogTable *t, void *arg),
				  const DtLogTable *t, void *arg)
{
	DtPartitionStep s = {step, t, arg};

	return dt_run_guarded(dt_partition_run_step, &s, "200", LOG,
						  psprintf("digitaltwin: maintenance of the partitions of %s postponed",
								   t->name));
}

/* Create the partition [from, from + width): the rows of its period move in. */
typedef struct DtNewPartition
{
	TimestampTz from;
	TimestampTz to;
} DtNewPartition;

static void
dt_partition_create(const DtLogTable *t, void *arg)
{
	DtNewPartition *p = arg;
	Oid			types[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[2];
	char	   *name;
	char	   *qname;
	char	   *qparent;
	char	   *qdefault;
	const char *stamp;
	bool		isnull;

	args[0] = TimestampTzGetDatum(p->from);
	args[1] = TimestampTzGetDatum(p->to);
	/* the start, in UTC, names it: event_log_20261202_040000 */
	stamp = timestamptz_to_str(p->from);
	if (SPI_execute_with_args("SELECT pg_catalog.to_char($1 AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS')",
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot name a partition starting at %s", stamp);
	name = psprintf("%s_%s", t->name,
					TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull)));
	qname = quote_qualified_identifier("digitaltwin", name);
	qparent = quote_qualified_identifier("digitaltwin", t->name);
	qdefault = quote_qualified_identifier("digitaltwin", psprintf("%s_default", t->name));

	if (SPI_execute(psprintf("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
							 qname, qparent), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot create partition %s", qname);
	/* its own index (see the state_history_default_twin_idx comment) */
	if (t->index != NULL &&
		SPI_execute(psprintf("CREATE INDEX ON %s (%s)", qname, t->index), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot index partition %s", qname);
	/* no batch adds rows of the period to DEFAULT between the move and the attach */
	if (SPI_execute(psprintf("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE", qdefault),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot lock %s", qdefault);
	if (SPI_execute_with_args(psprintf("WITH moved AS (DELETE FROM %s WHERE %s OPERATOR(pg_catalog.>=) $1 "
									   "AND %s OPERATOR(pg_catalog.<) $2 RETURNING *) "
									   "INSERT INTO %s SELECT * FROM moved",
									   qdefault, t->key, t->key, qname),
							  2, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "digitaltwin: cannot fill partition %s", qname);
	if (SPI_execute(psprintf("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%s) TO (%s)",
							 qparent, qname,
							 quote_literal_cstr(timestamptz_to_str(p->from)),
							 quote_literal_cstr(timestamptz_to_str(p->to))),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot attach partition %s", qname);
	if (SPI_execute_with_args("INSERT INTO digitaltwin.log_partitions (name, parent, from_time, to_time) "
							  "VALUES ($3, $4, $1, $2)",
							  4, (Oid[]) {TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID},
							  (Datum[]) {args[0], args[1], CStringGetTextDatum(name),
								  CStringGetTextDatum(t->name)},
							  NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "digitaltwin: cannot record partition %s", qname);
}

/*
 * Drop one expired partition.  For the state history, each twin whose last
 * state is in it (and that has no later one) keeps that state, carried
 * into the next period: twins_as_of() must find the state of a twin that
 * did not change for longer than the history is kept.
 */
typedef struct DtOldPartition
{
	char	   *name;
	TimestampTz to;
} DtOldPartition;

static void
dt_partition_drop(const DtLogTable *t, void *arg)
{
	DtOldPartition *p = arg;
	char	   *qname = quote_qualified_identifier("digitaltwin", p->name);
	Datum		to = TimestampTzGetDatum(p->to);
	Oid			type = TIMESTAMPTZOID;

	if (t->carry &&
		SPI_execute_with_args(psprintf("INSERT INTO digitaltwin.state_history "
									   "(model_id, model, twin_id, state, event_count, valid_from) "
									   "SELECT l.model_id, l.model, l.twin_id, l.state, l.event_count, $1 "
									   "FROM (SELECT DISTINCT ON (o.model_id, o.twin_id) o.* FROM %s o "
									   "      ORDER BY o.model_id, o.twin_id, o.valid_from DESC) l "
									   "WHERE l.state IS NOT NULL "
									   "AND EXISTS (SELECT FROM digitaltwin.models m "
									   "            WHERE m.id OPERATOR(pg_catalog.=) l.model_id "
									   "              AND m.history_keep IS NOT NULL) "
									   "AND NOT EXISTS (SELECT FROM digitaltwin.state_history h "
									   "                WHERE h.model_id OPERATOR(pg_catalog.=) l.model_id "
									   "                  AND h.twin_id OPERATOR(pg_catalog.=) l.twin_id "
									   "                  AND h.valid_from OPERATOR(pg_catalog.>=) $1)",
									   qname),
							  1, &type, &to, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "digitaltwin: cannot carry the states of %s forward", qname);
	if (SPI_execute(psprintf("DROP TABLE %s", qname), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: cannot drop partition %s", qname);
	if (SPI_execute_with_args("DELETE FROM digitaltwin.log_partitions WHERE name OPERATOR(pg_catalog.=) $1",
							  1, (Oid[]) {TEXTOID}, (Datum[]) {CStringGetTextDatum(p->name)},
							  NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "digitaltwin: cannot forget partition %s", qname);
}

/* Rows of the DEFAULT partition older than the cutoff. */
static void
dt_partition_trim_default(const DtLogTable *t, void *arg)
{
	Oid			type = TIMESTAMPTZOID;

	if (SPI_execute_with_args(psprintf("DELETE FROM %s WHERE %s OPERATOR(pg_catalog.<) $1",
									   quote_qualified_identifier("digitaltwin",
																  psprintf("%s_default", t->name)),
									   t->key),
							  1, &type, (Datum *) arg, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "digitaltwin: cannot trim the default partition of %s", t->name);
}

/* The longest keep of the models that use the table; false if none. */
static bool
dt_log_keep(const DtLogTable *t, TimestampTz now, TimestampTz *cutoff)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute(psprintf("SELECT pg_catalog.max(%s) FROM digitaltwin.models", t->keep),
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot read %s", t->keep);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
	{
		*cutoff = now;
		return false;
	}
	*cutoff = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
													  TimestampTzGetDatum(now), d));
	return true;
}

static void
dt_log_table_maintain(const DtLogTable *t, TimestampTz now)
{
	int64		width = (int64) dt_log_partition_s * USECS_PER_SEC;
	TimestampTz cutoff;
	bool		used = dt_log_keep(t, now, &cutoff);
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	uint64		i;
	uint64		n;
	DtOldPartition *old;

	/* expired partitions, oldest first */
	args[0] = CStringGetTextDatum(t->name);
	args[1] = TimestampTzGetDatum(cutoff);
	if (SPI_execute_with_args("SELECT name, to_time FROM digitaltwin.log_partitions "
							  "WHERE parent OPERATOR(pg_catalog.=) $1 AND to_time OPERATOR(pg_catalog.<=) $2 "
							  "ORDER BY to_time",
							  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot read digitaltwin.log_partitions");
	n = SPI_processed;
	old = palloc(sizeof(DtOldPartition) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		old[i].name = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
		old[i].to = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 2, &isnull));
	}
	for (i = 0; i < n; i++)
	{
		if (!dt_partition_step(dt_partition_drop, t, &old[i]))
			break;
	}
	(void) dt_partition_step(dt_partition_trim_default, t, &args[1]);

	/* the partitions of this period and the next, from the last one's end */
	if (used)
	{
		DtNewPartition p;
		TimestampTz period = now - (now % width);
		TimestampTz horizon = period + 2 * width;
		bool		isnull;
		Datum		last;

		if (SPI_execute_with_args("SELECT pg_catalog.max(to_time) FROM digitaltwin.log_partitions "
								  "WHERE parent OPERATOR(pg_catalog.=) $1",
								  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "digitaltwin: cannot read digitaltwin.log_partitions");
		last = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		/*
		 * After a long stop, no partitions for the periods gone by; but
		 * from the period of the oldest row waiting in the DEFAULT
		 * partition (written before the first partition existed), if it
		 * is still kept.
		 */
		if (isnull || DatumGetTimestampTz(last) < period)
		{
			p.from = period;
			if (SPI_execute(psprintf("SELECT pg_catalog.min(%s) FROM %s", t->key,
									 quote_qualified_identifier("digitaltwin",
																psprintf("%s_default", t->name))),
							true, 1) != SPI_OK_SELECT)
				elog(ERROR, "digitaltwin: cannot read the default partition of %s", t->name);
			last = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (!isnull && DatumGetTimestampTz(last) >= cutoff &&
				DatumGetTimestampTz(last) < period)
				p.from = DatumGetTimestampTz(last) - (DatumGetTimestampTz(last) % width);
		}
		else
			p.from = DatumGetTimestampTz(last);
		while (p.from < horizon)
		{
			p.to = p.from + width;
			if (!dt_partition_step(dt_partition_create, t, &p))
				break;
			p.from = p.to;
		}
	}
}

/*
 * One round of maintenance, at most once a second (worker 0, between
 * batches).
 */
void
dt_log_partitions_maintain(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (!TimestampDifferenceExceeds(last_maintenance, now, 1000))
		return;
	last_maintenance = now;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* version 1.8 */
	if (OidIsValid(dt_extension_oid()) && dt_table_exists("log_partitions"))
	{
		for (i = 0; i < lengthof(log_tables); i++)
			dt_log_table_maintain(&log_tables[i], now);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}
