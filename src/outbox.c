/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Messages from models back to the data sources (the outbox).
 *
 * digitaltwin.send_to_source(payload) only records the command in
 * worker-local memory, with the event being processed (model, twin, event
 * id).  The worker inserts all commands of a batch into digitaltwin.outbox
 with one statement in the batch's transaction, and after the commit
 * announces each with NOTIFY digitaltwin_outbox, whose payload is the row's
 * id (so that PostgreSQL, which merges identical notifications of a
 * transaction, never merges two commands; see dt_outbox_announce for why
 * after the commit).  A command exists exactly when the event that sent it
 * was consumed.  Commands of an event
 * whose model later fails are forgotten with the undo of its run
 * (dt_outbox_undo_to), as alerts are.
 *
 * A row's life (the SQL side, sql/digitaltwin--1.5--1.6.sql):
 *
 *	  pending (taken_at IS NULL)
 *		 │ digitaltwin.take_outbox(): FOR UPDATE SKIP LOCKED, sets taken_at
 *		 ▼
 *	  taken (taken_at set; final once the taking transaction commits, back
 *		 │	 to pending if it rolls back or its session dies)
 *		 │ worker 0's maintenance, digitaltwin.outbox_retention after taken_at
 *		 ▼
 *	  deleted
 *
 * Nothing here may fail once the model returned (DESIGN.md, trust rule 3):
 * the payload is bounded by digitaltwin.max_payload_size and the number of
 * commands per event by DT_MAX_OUTBOX_PER_EVENT when the model calls
 * send_to_source(), and the notification's payload is a number.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_send_to_source_sql);

#define DT_OUTBOX_CHANNEL "digitaltwin_outbox"
#define DT_MAX_OUTBOX_PER_EVENT 1000

typedef struct DtStagedCommand
{
	DtEvent    *event;			/* the sending event: model, twin, id */
	Jsonb	   *payload;		/* a copy in the batch's memory */
} DtStagedCommand;

static MemoryContext outbox_cxt = NULL;
static DtStagedCommand *commands = NULL;
static int	ncommands = 0;
static int	commands_size = 0;

static SPIPlanPtr insert_plan = NULL;

/* ids of the rows the last batch inserted, to announce after its commit */
static DtAnnouncements announce;

void
dt_outbox_begin(MemoryContext cxt)
{
	outbox_cxt = cxt;
	dt_announce_forget(&announce);	/* a failed batch's rows were never committed */
	commands_size = 16;
	commands = MemoryContextAlloc(cxt, sizeof(DtStagedCommand) * commands_size);
	ncommands = 0;
}

int
dt_outbox_mark(void)
{
	return ncommands;
}

void
dt_outbox_undo_to(int mark)
{
	if (ncommands > mark)
		ncommands = mark;
}

/* The i-th staged message (i < dt_outbox_mark()), for a rehearsal. */
Jsonb *
dt_outbox_get(int i)
{
	Assert(i < ncommands);
	return commands[i].payload;
}

void
digitaltwin_send_to_source(Jsonb *payload)
{
	DtStagedCommand *c;
	Size		limit = (Size) dt_max_payload_kb * 1024;

	(void) dt_require_model_call("digitaltwin.send_to_source()",
								 "A message to the data source belongs to the twin and event a digitaltwin worker is processing.",
								 "Send it from the process or init function registered with digitaltwin.create_model(); applications write to their sources directly.");
	dt_require_table("outbox", "1.6", "digitaltwin.send_to_source()");
	if (payload == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message to the data source must not be null")));
	if (VARSIZE(payload) > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message to the data source is too large"),
				 errdetail("The message has %zu bytes; digitaltwin.max_payload_size is %d kB.",
						   (Size) VARSIZE(payload), dt_max_payload_kb)));
	/* the commands of one event are consecutive */
	if (ncommands >= DT_MAX_OUTBOX_PER_EVENT &&
		commands[ncommands - DT_MAX_OUTBOX_PER_EVENT].event == dt_current_event->event)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a model may send at most %d messages to the data source for one event",
						DT_MAX_OUTBOX_PER_EVENT)));

	if (ncommands == commands_size)
	{
		commands_size *= 2;
		commands = repalloc(commands, sizeof(DtStagedCommand) * commands_size);
	}
	c = &commands[ncommands++];
	c->event = dt_current_event->event;
	c->payload = MemoryContextAlloc(outbox_cxt, VARSIZE(payload));
	memcpy(c->payload, payload, VARSIZE(payload));
}

Datum
digitaltwin_send_to_source_sql(PG_FUNCTION_ARGS)
{
	dt_require_preload();
	digitaltwin_send_to_source(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0));
	PG_RETURN_VOID();
}

/* ----------------------------------------------------------------
 * End of batch
 * ----------------------------------------------------------------
 */

/* Insert commands [start, end) with one statement; keep their ids. */
static void
dt_outbox_insert(int start, int end)
{
	int			n = end - start;
	Datum	   *models = palloc(sizeof(Datum) * n);
	Datum	   *twins = palloc(sizeof(Datum) * n);
	Datum	   *payloads = palloc(sizeof(Datum) * n);
	Datum	   *event_ids = palloc(sizeof(Datum) * n);
	Datum		args[4];
	int			ret;
	int			i;
	uint64		r;

	if (insert_plan == NULL)
	{
		Oid			types[4] = {TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, INT8ARRAYOID};

		/* the worker's session: search_path pinned, owner of the tables */
		insert_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.outbox "
										  "(model, twin_id, payload, event_id) "
										  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										  "pg_catalog.unnest($3), pg_catalog.unnest($4)) "
										  "RETURNING id",
										  4, types);
	}

	for (i = 0; i < n; i++)
	{
		DtStagedCommand *c = &commands[start + i];

		models[i] = CStringGetTextDatum(c->event->model);
		twins[i] = CStringGetTextDatum(c->event->twin_id);
		payloads[i] = JsonbPGetDatum(c->payload);
		event_ids[i] = Int64GetDatum(c->event->id);
	}
	args[0] = PointerGetDatum(construct_array(models, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(twins, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(payloads, n, JSONBOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_array(event_ids, n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	ret = SPI_execute_plan(insert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));

	/* announced after the commit (dt_outbox_announce) */
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		char		buf[32];

		snprintf(buf, sizeof(buf), INT64_FORMAT,
				 DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
											 SPI_tuptable->tupdesc, 1, &isnull)));
		dt_announce_add(&announce, buf);
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Insert the batch's commands (announced after the commit).  Runs inside
 * SPI in the batch's transaction.  Returns the number of commands.  A
 * statement takes at most DT_FLUSH_BYTES of payloads, so that its arrays
 * stay under the 1 GB a value can have.
 */
/*
 * After the batch's commit: one NOTIFY digitaltwin_outbox per row it
 * inserted (dt_announce_send says why not in the batch).  Gateways also
 * take without a notification (README, take_outbox).
 */
void
dt_outbox_announce(void)
{
	dt_announce_send(&announce, DT_OUTBOX_CHANNEL);
}

void
dt_outbox_abandon(void)
{
	dt_announce_forget(&announce);
}

int
dt_outbox_flush(void)
{
	int			start = 0;
	int			done = ncommands;
	Size		bytes = 0;
	int			i;

	for (i = 0; i < ncommands; i++)
	{
		Size		size = VARSIZE(commands[i].payload);

		if (i > start && bytes + size > DT_FLUSH_BYTES)
		{
			dt_outbox_insert(start, i);
			start = i;
			bytes = 0;
		}
		bytes += size;
	}
	if (ncommands > start)
		dt_outbox_insert(start, ncommands);
	ncommands = 0;
	return done;
}

void
dt_outbox_forget_plans(void)
{
	if (insert_plan)
		SPI_freeplan(insert_plan);
	insert_plan = NULL;
}
