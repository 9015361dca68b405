/*-------------------------------------------------------------------------
 *
 * cluster_ingest.c
 *	  A coordinator's batched ingestion: COPY and INSERT into the view
 *	  digitaltwin.cluster_ingest (issue 18, version 1.11).
 *
 * PostgreSQL 15 sends a COPY into a table whose partitions are foreign
 * tables one row at a time (postgres_fdw batches INSERT only), so a COPY
 * into digitaltwin.cluster_events pays a round trip to a node per event.
 * The view's INSTEAD OF row trigger keeps the rows in memory instead, and
 * every DT_INGEST_ROWS rows, and at the end of the statement (its AFTER
 * STATEMENT trigger), sends them with one INSERT ... SELECT FROM unnest()
 * per node into that node's queue (ingest_send): postgres_fdw batches per
 * foreign table, each node's rows in the one remote transaction the
 * coordinator's transaction holds there.
 *
 * Nothing is kept past its statement.  The INSERTs run as the caller, with
 * the caller's rights on the queues and its user mappings: the view adds
 * no right.  A buffer belongs to the (sub)transaction level of the
 * statement that filled it; a row arriving at a deeper level (a function
 * in the statement that inserts into the view inside an exception block)
 * gets its own buffer, so that the abort of that subtransaction throws away
 * its rows only, and a commit with rows still buffered is an error rather
 * than a silent loss.
 *
 * Copyright (c) 2026, digitaltwin developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_cluster_ingest_row);
PG_FUNCTION_INFO_V1(digitaltwin_cluster_ingest_flush);

/* the view's columns, in order */
#define DT_INGEST_COLUMNS 4
/* rows, or bytes of values, after which a statement's rows are sent */
#define DT_INGEST_ROWS 10000
#define DT_INGEST_BYTES (32 * 1024 * 1024)

typedef struct IngestBuffer
{
	int			nest_level;		/* of the statements that filled it */
	int			nrows;
	Size		bytes;
	MemoryContext cxt;			/* the buffer and its arrays */
	MemoryContext rows_cxt;		/* the values, emptied at each send */
	Datum	   *values[DT_INGEST_COLUMNS];
	bool	   *nulls[DT_INGEST_COLUMNS];
	struct IngestBuffer *outer; /* the buffer of a shallower level */
} IngestBuffer;

static IngestBuffer *ingest_top = NULL;
static bool callbacks_registered = false;
static bool ingest_sending = false;	/* in ingest_send(): see the row trigger */

static const Oid ingest_types[DT_INGEST_COLUMNS] = {
	TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID
};
static const Oid ingest_array_types[DT_INGEST_COLUMNS] = {
	TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID
};


static void
ingest_pop(void)
{
	IngestBuffer *b = ingest_top;

	ingest_top = b->outer;
	MemoryContextDelete(b->cxt);
}

/*
 * Every statement sends its rows at its end: a buffer of this nesting
 * level or deeper that still holds rows at a commit is a bug.
 */
static void
ingest_check_sent(int level)
{
	for (IngestBuffer *b = ingest_top; b != NULL && b->nest_level >= level; b = b->outer)
		if (b->nrows > 0)
			elog(ERROR, "%d rows of digitaltwin.cluster_ingest were not sent",
				 b->nrows);
}

static void
ingest_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			ingest_check_sent(0);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the contexts went with TopTransactionContext */
			ingest_top = NULL;
			ingest_sending = false;
			break;
	}
}

static void
ingest_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_PRE_COMMIT_SUB)
		ingest_check_sent(level);
	else if (event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (event == SUBXACT_EVENT_ABORT_SUB)
			ingest_sending = false;
		/* on a commit, empty ones only (the check above) */
		while (ingest_top != NULL && ingest_top->nest_level >= level)
			ingest_pop();
	}
}

static IngestBuffer *
ingest_buffer_for_level(int level)
{
	IngestBuffer *b;
	MemoryContext cxt;

	if (ingest_top != NULL && ingest_top->nest_level == level)
		return ingest_top;
	Assert(ingest_top == NULL || ingest_top->nest_level < level);

	if (!callbacks_registered)
	{
		RegisterXactCallback(ingest_xact_callback, NULL);
		RegisterSubXactCallback(ingest_subxact_callback, NULL);
		callbacks_registered = true;
	}
	cxt = AllocSetContextCreate(TopTransactionContext, "digitaltwin cluster_ingest",
								ALLOCSET_DEFAULT_SIZES);
	b = MemoryContextAllocZero(cxt, sizeof(IngestBuffer));
	b->cxt = cxt;
	b->rows_cxt = AllocSetContextCreate(cxt, "digitaltwin cluster_ingest rows",
										ALLOCSET_DEFAULT_SIZES);
	b->nest_level = level;
	for (int c = 0; c < DT_INGEST_COLUMNS; c++)
	{
		b->values[c] = MemoryContextAlloc(cxt, sizeof(Datum) * DT_INGEST_ROWS);
		b->nulls[c] = MemoryContextAlloc(cxt, sizeof(bool) * DT_INGEST_ROWS);
	}
	b->outer = ingest_top;
	ingest_top = b;
	return b;
}

/*
 * Qualified throughout: it runs as the caller, whose search_path may hold
 * anything.  %s: the target, digitaltwin.cluster_events or a node's queue.
 */
static const char *ingest_sql_format =
"INSERT INTO %s (model, twin_id, payload, event_time) "
"SELECT u.m, u.t, u.p, u.e FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
"pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(m, t, p, e)";

/* One INSERT of the rows rows[0..n-1] of the buffer into target. */
static void
ingest_insert(IngestBuffer *b, const char *target, const int *rows, int n)
{
	Datum		args[DT_INGEST_COLUMNS];
	Oid			argtypes[DT_INGEST_COLUMNS];
	Datum	   *values = palloc(sizeof(Datum) * n);
	bool	   *nulls = palloc(sizeof(bool) * n);
	int			ret;

	for (int c = 0; c < DT_INGEST_COLUMNS; c++)
	{
		for (int i = 0; i < n; i++)
		{
			values[i] = b->values[c][rows[i]];
			nulls[i] = b->nulls[c][rows[i]];
		}
		args[c] = dt_make_array(values, nulls, n, ingest_types[c]);
		argtypes[c] = ingest_array_types[c];
	}
	ret = SPI_execute_with_args(psprintf(ingest_sql_format, target), DT_INGEST_COLUMNS,
								argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
}

/*
 * The map of a set-up cluster: node of each partition (NULL: not set up,
 * or not a coordinator).  Read as the caller, with a snapshot taken after
 * the lock on cluster_events that a partition's move holds exclusively:
 * a move either committed before (its map is read) or waits for this
 * statement's transaction.
 */
static char **
ingest_read_map(int *modulus)
{
	char	  **nodes;
	int			ret;

	ret = SPI_execute("SELECT m.partition, m.modulus, m.node FROM digitaltwin.cluster_map m",
					  false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;
	*modulus = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	nodes = palloc0(sizeof(char *) * *modulus);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		int			partition = atoi(SPI_getvalue(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 1));

		if (partition < 0 || partition >= *modulus)
			elog(ERROR, "digitaltwin.cluster_map has partition %d of %d", partition, *modulus);
		nodes[partition] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
	}
	return nodes;
}

/*
 * Send the buffered rows.  On a coordinator, one INSERT per node into its
 * queue (the foreign table digitaltwin_cluster.queue_<node>, batch_size
 * 1000): postgres_fdw batches per foreign table, so going through
 * cluster_events' partitions would send a few rows per partition and round
 * trip.  The partition is computed as PostgreSQL routes the row, and the
 * node's guard checks it again.  Rows without a twin id, and everything
 * when there is no map (no cluster set up; a test's local partition), go
 * through cluster_events, which routes or refuses them.
 */
static void
ingest_send(IngestBuffer *b)
{
	MemoryContext old;
	char	  **nodes;
	int			modulus = 0;
	int		   *rows;

	if (b->nrows == 0)
		return;
	old = MemoryContextSwitchTo(b->rows_cxt);
	ingest_sending = true;
	SPI_connect();
	LockRelationOid(dt_extension_relid("cluster_events"), RowExclusiveLock);
	nodes = ingest_read_map(&modulus);
	rows = palloc(sizeof(int) * b->nrows);
	if (nodes == NULL)
	{
		for (int i = 0; i < b->nrows; i++)
			rows[i] = i;
		ingest_insert(b, "digitaltwin.cluster_events", rows, b->nrows);
	}
	else
	{
		int		   *partition = palloc(sizeof(int) * b->nrows);
		bool	   *sent = palloc0(sizeof(bool) * b->nrows);
		int			n = 0;

		/* no twin id: cluster_events refuses it as it would any such row */
		for (int i = 0; i < b->nrows; i++)
		{
			if (b->nulls[1][i])
			{
				rows[n++] = i;
				sent[i] = true;
			}
			else
				partition[i] = dt_cluster_partition((text *) DatumGetPointer(b->values[1][i]),
													modulus);
		}
		if (n > 0)
			ingest_insert(b, "digitaltwin.cluster_events", rows, n);

		/* then the rows of each node, in one statement per node */
		for (int i = 0; i < b->nrows; i++)
		{
			const char *node;

			if (sent[i])
				continue;
			node = nodes[partition[i]];
			if (node == NULL)
				elog(ERROR, "digitaltwin.cluster_map has no partition %d", partition[i]);
			n = 0;
			for (int j = i; j < b->nrows; j++)
				if (!sent[j] && nodes[partition[j]] != NULL &&
					strcmp(nodes[partition[j]], node) == 0)
				{
					rows[n++] = j;
					sent[j] = true;
				}
			ingest_insert(b, psprintf("digitaltwin_cluster.%s",
									  quote_identifier(psprintf("queue_%s", node))),
						  rows, n);
		}
	}
	SPI_finish();
	ingest_sending = false;
	MemoryContextSwitchTo(old);
	MemoryContextReset(b->rows_cxt);
	b->nrows = 0;
	b->bytes = 0;
}

static void
ingest_require_trigger(FunctionCallInfo fcinfo, bool row)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		(row ? !TRIGGER_FIRED_INSTEAD(trigdata->tg_event) ||
		 !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) :
		 !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		 !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event)) ||
		trigdata->tg_relation->rd_att->natts != DT_INGEST_COLUMNS)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s is the trigger of digitaltwin.cluster_ingest only",
						row ? "cluster_ingest_row()" : "cluster_ingest_flush()")));
}

/*
 * INSTEAD OF INSERT FOR EACH ROW: keep the row (detoasted: an array takes
 * no pointer to a toasted value) until its statement ends.
 */
Datum
digitaltwin_cluster_ingest_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleTableSlot *slot;
	IngestBuffer *b;
	MemoryContext old;

	ingest_require_trigger(fcinfo, true);

	/*
	 * A trigger on cluster_events (or a partition) that inserts into the
	 * view while its rows are being sent would add to the buffer being
	 * sent: refused.
	 */
	if (ingest_sending)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot insert into digitaltwin.cluster_ingest while its rows are being sent"),
				 errdetail("A trigger on digitaltwin.cluster_events or one of its partitions inserts into the view.")));
	slot = trigdata->tg_trigslot;
	slot_getallattrs(slot);

	b = ingest_buffer_for_level(GetCurrentTransactionNestLevel());
	old = MemoryContextSwitchTo(b->rows_cxt);
	for (int c = 0; c < DT_INGEST_COLUMNS; c++)
	{
		b->nulls[c][b->nrows] = slot->tts_isnull[c];
		if (slot->tts_isnull[c])
			b->values[c][b->nrows] = (Datum) 0;
		else if (ingest_types[c] == TIMESTAMPTZOID)
			b->values[c][b->nrows] = slot->tts_values[c];
		else
		{
			struct varlena *v = PG_DETOAST_DATUM_COPY(slot->tts_values[c]);

			b->values[c][b->nrows] = PointerGetDatum(v);
			b->bytes += VARSIZE(v);
		}
	}
	MemoryContextSwitchTo(old);
	b->nrows++;

	if (b->nrows >= DT_INGEST_ROWS || b->bytes >= DT_INGEST_BYTES)
		ingest_send(b);

	/* done: COPY counts the row and RETURNING sees it */
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/*
 * AFTER INSERT FOR EACH STATEMENT: send what the statement left.  A
 * statement run at this level inside another one (a function it calls)
 * sends the outer statement's rows with its own: the same transaction
 * level, so they commit or abort together all the same.
 */
Datum
digitaltwin_cluster_ingest_flush(PG_FUNCTION_ARGS)
{
	ingest_require_trigger(fcinfo, false);
	if (ingest_top != NULL &&
		ingest_top->nest_level == GetCurrentTransactionNestLevel())
	{
		IngestBuffer *b = ingest_top;

		ingest_send(b);
		if (ingest_top == b)
			ingest_pop();
	}
	return PointerGetDatum(NULL);
}
