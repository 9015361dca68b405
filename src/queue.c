/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The event queue: validation at insert time, waking the workers at
 *	  commit, rotation, retention and wait_idle().  The workers' reading
 *	  and deleting of batches is in fetch.c.
 *
 * Consumption rule.  A worker reads the oldest visible events of its
 * partition in id order and deletes them in the same transaction that
 * stores the twins' new states.  No "last id seen" watermark exists: an
 * event of a transaction that commits late simply becomes visible to a later
 * batch, so it is never skipped, and an event of a rolled-back transaction
 * is never seen at all.
 *
 * Rotation.  digitaltwin.events has three partitions; new events go to the
 * one of the current generation (modulo 3), read by queue_partition() from
 * shared memory.  Worker 0 maintains the queue (dt_queue_maintain): every
 * digitaltwin.queue_rotation it advances the generation, and it truncates
 * the partition of an older generation once that is empty.  Emptiness is
 * checked while holding the partition's ACCESS EXCLUSIVE lock (waited for
 * briefly, if at all): no transaction can then be inserting into it (one
 * that read the old generation just before the switch holds a conflicting
 * lock until it ends), so the truncation can never remove an event that was not
 * consumed, whatever any backend believes the current generation is.
 * The generation advances only when the partition it moves to has been
 * truncated, so at most two generations hold events.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/tableam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "storage/lmgr.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/resowner.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_event_valid);
PG_FUNCTION_INFO_V1(digitaltwin_events_inserted);
PG_FUNCTION_INFO_V1(digitaltwin_partition_of);
PG_FUNCTION_INFO_V1(digitaltwin_wait_idle);
PG_FUNCTION_INFO_V1(digitaltwin_queue_partition);

static bool wake_at_commit = false;
static bool xact_callback_registered = false;

static TimestampTz last_maintenance = 0;
static TimestampTz next_truncate_attempt = 0;
static int	truncate_backoff_ms = 0;

/*
 * At commit of a transaction that inserted events, set the workers'
 * latches.  A rolled-back insert wakes nobody.
 */
static void
dt_queue_xact_callback(XactEvent event, void *arg)
{
	DtDatabase *db;
	int			i;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit && dt_shared != NULL &&
				(db = dt_database_current()) != NULL)
			{
				/*
				 * No lock: a stale pointer is the latch of a worker that just
				 * exited, and setting it is harmless (PGPROC latches are never
				 * freed); a worker that starts now polls the queue anyway.
				 */
				for (i = 0; i < dt_shared->nworkers; i++)
				{
					Latch	   *latch = db->slots[i].latch;

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
 * Validation of each new event: the CHECK constraint of digitaltwin.events
 * calls digitaltwin_event_valid(), which returns true or raises the error
 * that says what is wrong.  A CHECK constraint, rather than a BEFORE ROW
 * trigger, lets COPY and multi-row INSERT keep inserting in batches (a
 * BEFORE ROW trigger forces them to insert row by row).
 *
 * dt_event_check() is its body, for send() inside a model too (messages.c),
 * which checks a message when the model sends it so that a bad one fails
 * its sending event, as the CHECK of an INSERT did.  model and twin_id are
 * NULL for SQL NULLs.
 */
void
dt_event_check(const char *model, text *twin_id, Datum payload, bool payload_isnull)
{
	Jsonb	   *jb;

	dt_require_preload();
	if (model == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event model must not be null")));

	if (twin_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event twin_id must not be null"),
				 errdetail("The event is for model \"%s\".", model)));
	if (VARSIZE_ANY_EXHDR(twin_id) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event twin_id must not be empty"),
				 errdetail("The event is for model \"%s\".", model)));
	if (VARSIZE_ANY_EXHDR(twin_id) > DT_TWIN_ID_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("event twin_id must be at most %d bytes", DT_TWIN_ID_MAXLEN),
				 errdetail("The twin_id has %d bytes.", (int) VARSIZE_ANY_EXHDR(twin_id))));

	if (payload_isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("event payload must not be null"),
				 errhint("Send an empty object '{}' for an event without data.")));
	if (toast_raw_datum_size(payload) > (Size) dt_max_payload_kb * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event payload is too large"),
				 errdetail("The payload has %zu bytes; digitaltwin.max_payload_size is %d kB.",
						   toast_raw_datum_size(payload), dt_max_payload_kb)));
	jb = DatumGetJsonbP(payload);
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event payload must be a JSON object"),
				 errdetail("The payload is %s.",
						   JB_ROOT_IS_SCALAR(jb) ? "a scalar" : "an array")));

	if (!dt_model_name_known(model))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", model),
				 errhint("Create it with digitaltwin.create_model().")));
	/* the inserting role; inside a model, its owner (rights.c) */
	dt_check_model_send(model);
	/* on a node of a cluster, only the twins it owns (cluster.c) */
	dt_cluster_check_owner(model, twin_id);
}

Datum
digitaltwin_event_valid(PG_FUNCTION_ARGS)
{
	dt_event_check(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)),
				   PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
				   PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2),
				   PG_ARGISNULL(2));
	PG_RETURN_BOOL(true);
}

/*
 * AFTER INSERT statement trigger on digitaltwin.events: the workers are
 * woken when the transaction commits.  In a database that no worker will
 * serve, the statement fails instead: never a silent queue.
 */
Datum
digitaltwin_events_inserted(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("digitaltwin.events_inserted() must be fired AFTER ... FOR EACH STATEMENT")));
	dt_require_preload();
	dt_require_served();
	dt_queue_mark_wake();
	return PointerGetDatum(NULL);
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

/*
 * Default of digitaltwin.events.part: the partition new events go to.
 * Called for every inserted row, so it reads shared memory; after a restart
 * the first caller loads the generation from queue_state.  A database
 * without an entry (not served yet) has no worker to rotate the queue: its
 * generation is the one in the table.
 */
static uint64
dt_queue_generation(void)
{
	DtDatabase *db = dt_database_current();
	uint64		g = db ? pg_atomic_read_u64(&db->queue_generation) : DT_GENERATION_UNKNOWN;

	if (g == DT_GENERATION_UNKNOWN)
	{
		uint64		expected = DT_GENERATION_UNKNOWN;
		DtTrustedScope scope;
		bool		isnull;
		int			ret;

		/* runs in the inserting session: as the owner, path pinned */
		dt_trusted_enter(&scope);
		ret = SPI_execute("SELECT generation FROM digitaltwin.queue_state", false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "digitaltwin: cannot read digitaltwin.queue_state");
		g = (uint64) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
		dt_trusted_leave(&scope);

		/*
		 * Only replace "unknown": the coordinator may have published a newer
		 * generation meanwhile.  Either value is safe (see the header).
		 */
		if (db != NULL &&
			!pg_atomic_compare_exchange_u64(&db->queue_generation,
											&expected, g))
			g = expected;
	}
	return g;
}

Datum
digitaltwin_queue_partition(PG_FUNCTION_ARGS)
{
	dt_require_preload();
	PG_RETURN_INT32((int32) (dt_queue_generation() % DT_QUEUE_PARTITIONS));
}

/* Forget the cached generation (the coordinator restarts). */
void
dt_queue_forget_generation(void)
{
	pg_atomic_write_u64(&dt_db->queue_generation, DT_GENERATION_UNKNOWN);
}

/* ----------------------------------------------------------------
 * Queue maintenance: rotation and retention (worker 0)
 * ----------------------------------------------------------------
 */

/* the partition of digitaltwin.events of a generation */
Oid
dt_queue_partition_relid(uint64 generation)
{
	char		name[NAMEDATALEN];

	snprintf(name, sizeof(name), "events_%d",
			 (int) (generation % DT_QUEUE_PARTITIONS));
	return dt_extension_relid(name);
}

static bool
dt_relation_has_rows(Oid relid)
{
	char	   *sql = psprintf("SELECT 1 FROM %s LIMIT 1",
							   quote_qualified_identifier("digitaltwin", get_rel_name(relid)));

	if (SPI_execute(sql, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", sql);
	return SPI_processed > 0;
}

/*
 * Take the partition's ACCESS EXCLUSIVE lock.  The other workers hold
 * ACCESS SHARE on every partition for the length of a batch, so when the
 * lock is not free at once we wait for it, but briefly: while our request
 * waits, every new locker of the partition (the workers' next fetches, the
 * stats view) queues behind it.  A reader that keeps a long transaction open
 * on digitaltwin.events would make every round wait the full time, so
 * after a failure the next attempt backs off (dt_queue_truncate_drained).
 */
static bool
dt_queue_lock_partition(Oid relid)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool locked = false;

	if (ConditionalLockRelationOid(relid, AccessExclusiveLock))
		return true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		(void) set_config_option("lock_timeout", "200", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		LockRelationOid(relid, AccessExclusiveLock);
		locked = true;
		/* the lock passes to the parent transaction */
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return locked;
}

/*
 * Truncate the partition of generation 'generation' if it is empty.
 */
static bool
dt_queue_truncate_drained(uint64 generation)
{
	Oid			relid = dt_queue_partition_relid(generation);
	TimestampTz now = GetCurrentTimestamp();

	/* cheap test first: under load a partition drains for a while */
	if (now < next_truncate_attempt || dt_relation_has_rows(relid))
		return false;
	if (!dt_queue_lock_partition(relid))
	{
		truncate_backoff_ms = Min(Max(truncate_backoff_ms * 2, 1000), 10000);
		next_truncate_attempt = TimestampTzPlusMilliseconds(now, truncate_backoff_ms);
		return false;
	}
	truncate_backoff_ms = 0;
	/* new snapshot, taken with the lock held: sees every committed insert */
	if (dt_relation_has_rows(relid))
		return false;
	if (SPI_execute(psprintf("TRUNCATE %s",
							 quote_qualified_identifier("digitaltwin", get_rel_name(relid))),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "digitaltwin: TRUNCATE of a queue partition failed");
	return true;
}

static void
dt_queue_apply_retention(const char *table, const char *column, int retention_s)
{
	char	   *sql;
	Oid			argtype = TIMESTAMPTZOID;
	Datum		cutoff;

	if (retention_s <= 0)
		return;
	/* computed here: the statement calls no function by name */
	cutoff = TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTransactionStartTimestamp(),
															 -(int64) retention_s * 1000));
	/* a bounded chunk per round keeps the maintenance transaction short */
	sql = psprintf("DELETE FROM digitaltwin.%s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
				   "SELECT ctid FROM digitaltwin.%s WHERE %s OPERATOR(pg_catalog.<) $1 "
				   "LIMIT 10000))",
				   table, table, column);
	if (SPI_execute_with_args(sql, 1, &argtype, &cutoff, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "digitaltwin: retention of %s failed", table);
}

/*
 * Whether the extension is there to maintain, with the registry locked as
 * every batch locks it first (worker.c): DROP EXTENSION takes the registry
 * before the tables maintenance touches (protect.c), so maintenance that
 * held queue_state or a queue partition while waiting for the registry
 * would deadlock with the drop.  A drop waited for leaves nothing to do;
 * the snapshot is taken again once the lock is held.
 */
static bool
dt_queue_maintenance_may_run(void)
{
	if (!OidIsValid(get_extension_oid("digitaltwin", true)))
		return false;
	LockRelationOid(dt_models_relid(), RowShareLock);
	if (!OidIsValid(get_extension_oid("digitaltwin", true)))
		return false;
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	return true;
}

/*
 * One round of queue maintenance, at most once a second, in its own
 * transaction.  Called by worker 0 between batches.
 */
void
dt_queue_maintain(void)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		generation;
	int64		drained;
	TimestampTz rotated_at;
	bool		isnull;
	bool		rotated = false;
	bool		truncated = false;

	if (!TimestampDifferenceExceeds(last_maintenance, now, 1000))
		return;
	last_maintenance = now;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "digitaltwin: queue maintenance");

	if (dt_queue_maintenance_may_run())
	{
		/* worker 0 is its only writer: no row lock, no write when idle */
		if (SPI_execute("SELECT generation, drained_through, rotated_at "
						"FROM digitaltwin.queue_state", false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "digitaltwin: cannot read digitaltwin.queue_state");
		generation = (uint64) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));
		drained = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 2, &isnull));
		rotated_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 3, &isnull));

		/* truncate the oldest generation still holding a partition */
		if ((uint64) (drained + 1) < generation &&
			dt_queue_truncate_drained((uint64) (drained + 1)))
		{
			drained++;
			truncated = true;
		}

		/*
		 * Advance when the next partition is free (its generation, three
		 * back, was truncated), it is time, and there is something to move
		 * away from.
		 */
		if (drained >= (int64) generation - 2 &&
			TimestampDifferenceExceeds(rotated_at, now, dt_queue_rotation_ms) &&
			dt_relation_has_rows(dt_queue_partition_relid(generation)))
		{
			generation++;
			rotated = true;
		}

		if ((truncated || rotated) &&
			SPI_execute(psprintf("UPDATE digitaltwin.queue_state SET generation = " UINT64_FORMAT
								 ", drained_through = " INT64_FORMAT "%s",
								 generation, drained, rotated ? ", rotated_at = pg_catalog.now()" : ""),
						false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "digitaltwin: cannot update digitaltwin.queue_state");

		dt_queue_apply_retention("alerts", "raised_at", dt_alert_retention_s);
		dt_queue_apply_retention("dead_letters", "failed_at", dt_dead_letter_retention_s);
		/* version 1.6; an untaken row (taken_at NULL) is never deleted */
		if (dt_table_exists("outbox"))
			dt_queue_apply_retention("outbox", "taken_at", dt_outbox_retention_s);
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	/* only a committed rotation may be seen by inserters */
	if (rotated)
		pg_atomic_write_u64(&dt_db->queue_generation, generation);
}

/* ----------------------------------------------------------------
 * wait_idle
 * ----------------------------------------------------------------
 */

/*
 * The highest event id handed out so far.  Every event committed before
 * this is called has an id no higher.  Read from the identity sequence, as
 * the extension's owner: reading digitaltwin.events itself would hold a lock
 * on its partitions for the rest of the caller's transaction, and a queue
 * truncation waiting behind that lock would hold up the workers.
 */
static int64
dt_events_last_id(void)
{
	DtTrustedScope scope;
	int64		last_id;
	bool		isnull;

	dt_trusted_enter(&scope);
	if (SPI_execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
					"FROM digitaltwin.events_id_seq", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "digitaltwin: cannot read digitaltwin.events_id_seq");
	last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	dt_trusted_leave(&scope);
	return last_id;
}

/*
 * now + timeout, where a deadline beyond the range of timestamps ('1000000
 * years') is no deadline (DT_NOEND, never reached) and one before it is a
 * deadline already passed, instead of "timestamp out of range".
 */
static TimestampTz
dt_wait_deadline(const Interval *timeout, TimestampTz now)
{
	TimestampTz deadline;
	int			where = dt_timestamp_plus_interval(now, timeout, &deadline);

	if (where > 0)
		return DT_NOEND;
	if (where < 0)
		return now;
	return deadline;
}

/*
 * One round of wait_idle(): wait until every event committed before the
 * round began is consumed, or the deadline.  *messages tells whether a
 * batch published meanwhile may have sent messages.
 *
 * Each worker's next fetch takes its snapshot after we read its fetch
 * counter here, so it sees every event committed before.  Once a batch of
 * such a fetch is published and its fetch saw all of the partition's
 * events up to last_id, they are all consumed.  No table is read while
 * waiting (see dt_events_last_id), and idle workers are woken to make that
 * fetch.  A batch counts its messages when it publishes, after its commit,
 * under the same lock as its coverage: a round that saw a batch's coverage
 * sees its messages, and a batch that committed messages after the round
 * began has not counted them yet when the round begins.
 */
static bool
dt_wait_round(DtDatabase *db, TimestampTz deadline, bool *messages)
{
	uint64		fetches[DT_MAX_WORKERS];
	uint64		message_batches[DT_MAX_WORKERS];
	int64		last_id;
	int			i;

	*messages = false;
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		SpinLockAcquire(&slot->mutex);
		fetches[i] = slot->fetches;
		message_batches[i] = slot->message_batches;
		SpinLockRelease(&slot->mutex);
	}
	last_id = dt_events_last_id();
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		Latch	   *latch = db->slots[i].latch;

		if (latch != NULL)
			SetLatch(latch);
	}

	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		for (;;)
		{
			bool		covered;

			SpinLockAcquire(&slot->mutex);
			covered = slot->covered_fetch > fetches[i] &&
				slot->covered_through >= last_id;
			SpinLockRelease(&slot->mutex);
			if (covered)
				break;
			if (GetCurrentTimestamp() >= deadline)
				return false;
			ConditionVariableTimedSleep(&db->progress_cv, 100, PG_WAIT_EXTENSION);
			/* without a deadline, a cancel or statement_timeout ends it */
			CHECK_FOR_INTERRUPTS();
		}
	}
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		SpinLockAcquire(&slot->mutex);
		if (slot->message_batches != message_batches[i])
			*messages = true;
		SpinLockRelease(&slot->mutex);
	}
	return true;
}

Datum
digitaltwin_wait_idle(PG_FUNCTION_ARGS)
{
	Interval   *timeout = PG_GETARG_INTERVAL_P(0);
	DtDatabase *db;
	TimestampTz deadline;
	bool		done = false;
	int			round;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.wait_idle()");

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
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("digitaltwin.wait_idle() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("It must see the workers' commits, which such a transaction's snapshot hides."),
				 errhint("Run it in a READ COMMITTED transaction.")));

	/* the workers wait for a switch of lifecycle.c to end: never idle */
	{
		LOCKTAG		tag;

		SET_LOCKTAG_RELATION(tag, MyDatabaseId, dt_models_relid());
		if (LockHeldByMe(&tag, ExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
					 errmsg("digitaltwin.wait_idle() cannot run in a transaction that switched a model"),
					 errdetail("alter_model(), pause_model(), resume_model(), set_event_log(), set_history() and drop_model() hold the workers until their transaction ends."),
					 errhint("Commit the transaction, then call wait_idle().")));
	}

	deadline = dt_wait_deadline(timeout, GetCurrentTimestamp());

	/* just after CREATE EXTENSION or server start: the launcher is starting the workers */
	db = dt_database_wait_served(deadline);
	if (db == NULL)
		PG_RETURN_BOOL(false);

	/*
	 * Events committed before the call are consumed after one round; the
	 * messages they caused were committed by then, and the next round
	 * consumes them, and so on.  A round in which no batch sent a message
	 * ends the wait.  Each round consumes one more level of every chain,
	 * and chains are at most max_message_depth long, so under a steady
	 * stream of other messages the wait still ends after that many rounds.
	 */
	ConditionVariablePrepareToSleep(&db->progress_cv);
	for (round = 0; round <= dt_max_message_depth + 1; round++)
	{
		bool		messages;

		if (!dt_wait_round(db, deadline, &messages))
			goto out;
		if (!messages)
			break;
	}
	done = true;

out:
	ConditionVariableCancelSleep();
	PG_RETURN_BOOL(done);
}
