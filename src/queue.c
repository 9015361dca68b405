/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The event queue: validation at insert time, waking the workers at
 *	  commit, fetching and consuming batches, and wait_idle().
 *
 * Consumption rule.  A worker reads the oldest visible events of its
 * partition in id order and deletes them in the same transaction that
 * stores the twins' new states.  No "last id seen" watermark exists: an
 * event of a transaction that commits late simply becomes visible to a later
 * batch, so it is never skipped, and an event of a rolled-back transaction
 * is never seen at all.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_events_check);
PG_FUNCTION_INFO_V1(digitaltwin_partition_of);
PG_FUNCTION_INFO_V1(digitaltwin_wait_idle);

/* column numbers of digitaltwin.events */
#define EV_ATT_MODEL	2
#define EV_ATT_TWIN_ID	3
#define EV_ATT_PAYLOAD	4

static bool wake_at_commit = false;
static bool xact_callback_registered = false;

static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr delete_plan = NULL;

/*
 * At commit of a transaction that inserted events, set the workers'
 * latches.  A rolled-back insert wakes nobody.
 */
static void
dt_queue_xact_callback(XactEvent event, void *arg)
{
	int			i;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit && dt_shared != NULL)
			{
				/*
				 * No lock: a stale pointer is the latch of a worker that just
				 * exited, and setting it is harmless (PGPROC latches are never
				 * freed); a worker that starts now polls the queue anyway.
				 */
				for (i = 0; i < dt_shared->nworkers; i++)
				{
					Latch	   *latch = dt_shared->slots[i].latch;

					if (latch != NULL)
						SetLatch(latch);
				}
			}
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

static void
dt_queue_mark_wake(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(dt_queue_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/*
 * BEFORE INSERT row trigger on digitaltwin.events.
 */
Datum
digitaltwin_events_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	Datum		d;
	bool		isnull;
	char	   *model;
	text	   *twin_id;
	Jsonb	   *payload;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		elog(ERROR, "digitaltwin_events_check: must be fired BEFORE INSERT FOR EACH ROW");

	dt_require_preload();
	tuple = trigdata->tg_trigtuple;
	desc = trigdata->tg_relation->rd_att;

	d = heap_getattr(tuple, EV_ATT_MODEL, desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event model must not be null")));
	model = TextDatumGetCString(d);

	d = heap_getattr(tuple, EV_ATT_TWIN_ID, desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event twin_id must not be null"),
				 errdetail("Event for model \"%s\".", model)));
	twin_id = DatumGetTextPP(d);
	if (VARSIZE_ANY_EXHDR(twin_id) == 0 ||
		VARSIZE_ANY_EXHDR(twin_id) > DT_TWIN_ID_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("event twin_id must be 1 to %d bytes long", DT_TWIN_ID_MAXLEN),
				 errdetail("The twin_id has %d bytes.", (int) VARSIZE_ANY_EXHDR(twin_id))));
	if (memchr(VARDATA_ANY(twin_id), '\0', VARSIZE_ANY_EXHDR(twin_id)) != NULL)
		elog(ERROR, "twin_id contains a zero byte");	/* text cannot */

	d = heap_getattr(tuple, EV_ATT_PAYLOAD, desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event payload must not be null"),
				 errhint("Send an empty object '{}' for an event without data.")));
	if (toast_raw_datum_size(d) > (Size) dt_max_payload_kb * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event payload is too large"),
				 errdetail("The payload has %zu bytes; digitaltwin.max_payload_size is %d kB.",
						   toast_raw_datum_size(d), dt_max_payload_kb)));
	payload = DatumGetJsonbP(d);
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event payload must be a JSON object"),
				 errdetail("The payload is %s.",
						   JB_ROOT_IS_SCALAR(payload) ? "a scalar" : "an array")));

	if (!dt_model_name_known(model))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model),
				 errhint("Create it with digitaltwin.create_model().")));

	dt_queue_mark_wake();
	return PointerGetDatum(tuple);
}

Datum
digitaltwin_partition_of(PG_FUNCTION_ARGS)
{
	text	   *twin_id = PG_GETARG_TEXT_PP(0);
	int32		partitions = PG_GETARG_INT32(1);

	if (partitions < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of partitions must be at least 1")));
	PG_RETURN_INT32(dt_partition_of(VARDATA_ANY(twin_id),
									VARSIZE_ANY_EXHDR(twin_id), partitions));
}

/* ----------------------------------------------------------------
 * Worker side
 * ----------------------------------------------------------------
 */

void
dt_queue_forget_plans(void)
{
	if (fetch_plan)
		SPI_freeplan(fetch_plan);
	if (delete_plan)
		SPI_freeplan(delete_plan);
	fetch_plan = NULL;
	delete_plan = NULL;
}

/*
 * Read up to 'limit' of the oldest visible events of a partition into
 * CurrentMemoryContext (the caller's batch context).  Runs inside SPI.
 */
int
dt_fetch_events(int partition, int partitions, int limit, DtEvent **events)
{
	Datum		args[3];
	int			ret;
	uint64		i;
	MemoryContext cxt = CurrentMemoryContext;
	DtEvent    *evs;

	if (fetch_plan == NULL)
	{
		Oid			types[3] = {INT4OID, INT4OID, INT4OID};

		fetch_plan = dt_spi_prepare_kept("SELECT ctid, id, model, twin_id, payload, enqueued_at "
										 "FROM digitaltwin.events "
										 "WHERE digitaltwin.partition_of(twin_id, $1) = $2 "
										 "ORDER BY id LIMIT $3", 3, types);
	}

	args[0] = Int32GetDatum(partitions);
	args[1] = Int32GetDatum(partition);
	args[2] = Int32GetDatum(limit);
	ret = SPI_execute_plan(fetch_plan, args, NULL, false, limit);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));

	evs = MemoryContextAllocZero(cxt, sizeof(DtEvent) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		DtEvent    *ev = &evs[i];
		bool		isnull;
		MemoryContext old;

		ev->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
		ev->id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		old = MemoryContextSwitchTo(cxt);
		ev->model = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		ev->twin_id = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		/* detoast now: dead letters and models need the whole payload */
		ev->payload = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 5, &isnull));
		MemoryContextSwitchTo(old);
		ev->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	}
	*events = evs;
	return (int) SPI_processed;
}

/*
 * Delete consumed events by ctid, in the batch's transaction.
 */
void
dt_delete_events(DtEvent *events, int nevents)
{
	Datum	   *tids;
	ArrayType  *arr;
	Datum		arg;
	int			ret;
	int			i;

	if (nevents == 0)
		return;
	if (delete_plan == NULL)
	{
		Oid			type = TIDARRAYOID;

		delete_plan = dt_spi_prepare_kept("DELETE FROM digitaltwin.events WHERE ctid = ANY($1)",
										  1, &type);
	}

	tids = palloc(sizeof(Datum) * nevents);
	for (i = 0; i < nevents; i++)
		tids[i] = PointerGetDatum(&events[i].tid);
	arr = construct_array(tids, nevents, TIDOID, sizeof(ItemPointerData), false,
						  TYPALIGN_SHORT);
	arg = PointerGetDatum(arr);
	ret = SPI_execute_plan(delete_plan, &arg, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	if (SPI_processed != (uint64) nevents)
		elog(ERROR, "digitaltwin: consumed %d events but deleted " UINT64_FORMAT,
			 nevents, SPI_processed);
}

/* ----------------------------------------------------------------
 * wait_idle
 * ----------------------------------------------------------------
 */

static bool
dt_timed_out(TimestampTz deadline)
{
	return GetCurrentTimestamp() >= deadline;
}

static void
dt_wait_progress(void)
{
	ConditionVariableTimedSleep(&dt_shared->progress_cv, 10, PG_WAIT_EXTENSION);
}

/*
 * Events with id <= max_id still visible to a fresh snapshot?  In READ
 * COMMITTED every SPI query of a volatile function takes a new snapshot.
 */
static bool
dt_events_pending(int64 max_id)
{
	Datum		arg = Int64GetDatum(max_id);
	Oid			type = INT8OID;
	int			ret;

	ret = SPI_execute_with_args("SELECT 1 FROM digitaltwin.events WHERE id <= $1 LIMIT 1",
								1, &type, &arg, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	return SPI_processed > 0;
}

Datum
digitaltwin_wait_idle(PG_FUNCTION_ARGS)
{
	Interval   *timeout = PG_GETARG_INTERVAL_P(0);
	TimestampTz deadline;
	int64		max_id = 0;
	bool		isnull;
	bool		done = false;
	uint64		generation[DT_MAX_WORKERS];
	bool		busy[DT_MAX_WORKERS];
	int			i;
	int			ret;

	dt_require_preload();

	/*
	 * Workers see only committed events: waiting for this transaction's own
	 * events would wait until the timeout, for nothing.
	 */
	if (wake_at_commit)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("digitaltwin.wait_idle() cannot wait for events queued by its own transaction"),
				 errdetail("The workers see an event only once the transaction that queued it has committed."),
				 errhint("Commit the transaction that sends the events, then call wait_idle().")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("digitaltwin.wait_idle() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("It must see the workers' commits, which such a transaction's snapshot hides.")));

	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(GetCurrentTimestamp()),
													   IntervalPGetDatum(timeout)));

	SPI_connect();
	ret = SPI_execute("SELECT max(id) FROM digitaltwin.events", false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	max_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		max_id = 0;

	ConditionVariablePrepareToSleep(&dt_shared->progress_cv);

	/* 1. every event committed before the call is consumed */
	while (max_id > 0 && dt_events_pending(max_id))
	{
		if (dt_timed_out(deadline))
			goto out;
		dt_wait_progress();
		CHECK_FOR_INTERRUPTS();
	}

	/*
	 * 2. the batches that consumed them are published.  A worker publishes
	 * after its commit and before it stops being busy, so waiting for each
	 * worker that is busy now to finish its current batch is enough.
	 */
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &dt_shared->slots[i];

		SpinLockAcquire(&slot->mutex);
		busy[i] = slot->busy;
		generation[i] = slot->generation;
		SpinLockRelease(&slot->mutex);
	}
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		for (;;)
		{
			DtWorkerSlot *slot = &dt_shared->slots[i];
			bool		finished;

			if (!busy[i])
				break;
			SpinLockAcquire(&slot->mutex);
			finished = slot->generation != generation[i] || slot->pid == 0;
			SpinLockRelease(&slot->mutex);
			if (finished)
				break;
			if (dt_timed_out(deadline))
				goto out;
			dt_wait_progress();
			CHECK_FOR_INTERRUPTS();
		}
	}
	done = true;

out:
	ConditionVariableCancelSleep();
	SPI_finish();
	PG_RETURN_BOOL(done);
}
