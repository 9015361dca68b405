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
 * STATEMENT trigger), one INSERT ... SELECT FROM unnest() into
 * cluster_events routes them: postgres_fdw then sends each partition's rows
 * to its node in batches of the foreign table's batch_size, each node's in
 * the one remote transaction the coordinator's transaction holds there.
 *
 * Nothing is kept past its statement.  The INSERT runs as the caller, with
 * the caller's rights on cluster_events and its user mappings: the view
 * adds no right.  A buffer belongs to the (sub)transaction level of the
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
#include "utils/datum.h"
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

static const Oid ingest_types[DT_INGEST_COLUMNS] = {
	TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID
};
static const Oid ingest_array_types[DT_INGEST_COLUMNS] = {
	TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID
};

/*
 * Qualified throughout: it runs as the caller, whose search_path may hold
 * anything.
 */
static const char *ingest_sql =
"INSERT INTO digitaltwin.cluster_events (model, twin_id, payload, event_time) "
"SELECT u.m, u.t, u.p, u.e FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
"pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(m, t, p, e)";

static void
ingest_pop(void)
{
	IngestBuffer *b = ingest_top;

	ingest_top = b->outer;
	MemoryContextDelete(b->cxt);
}

static void
ingest_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/* every statement sends its rows at its end */
			for (IngestBuffer *b = ingest_top; b != NULL; b = b->outer)
				if (b->nrows > 0)
					elog(ERROR, "%d rows of digitaltwin.cluster_ingest were not sent",
						 b->nrows);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the contexts went with TopTransactionContext */
			ingest_top = NULL;
			break;
	}
}

static void
ingest_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_PRE_COMMIT_SUB)
	{
		for (IngestBuffer *b = ingest_top; b != NULL && b->nest_level >= level; b = b->outer)
			if (b->nrows > 0)
				elog(ERROR, "%d rows of digitaltwin.cluster_ingest were not sent",
					 b->nrows);
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB)
	{
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
 * Send the buffered rows: one statement, which routes them to the nodes.
 * The arrays are built beside the values, all thrown away after.
 */
static void
ingest_send(IngestBuffer *b)
{
	Datum		args[DT_INGEST_COLUMNS];
	Oid			argtypes[DT_INGEST_COLUMNS];
	MemoryContext old;
	int			ret;

	if (b->nrows == 0)
		return;
	old = MemoryContextSwitchTo(b->rows_cxt);
	for (int c = 0; c < DT_INGEST_COLUMNS; c++)
	{
		args[c] = dt_make_array(b->values[c], b->nulls[c], b->nrows, ingest_types[c]);
		argtypes[c] = ingest_array_types[c];
	}
	MemoryContextSwitchTo(old);

	SPI_connect();
	ret = SPI_execute_with_args(ingest_sql, DT_INGEST_COLUMNS, argtypes, args,
								NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	SPI_finish();

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
		ingest_send(ingest_top);
		ingest_pop();
	}
	return PointerGetDatum(NULL);
}
