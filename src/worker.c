/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The digitaltwin background workers.
 *
 * Worker i owns partition i: the twins whose id hashes to i (see
 * dt_partition_of).  Because one worker applies all events of a twin, in id
 * order within each batch, a twin's events apply in the order they became
 * visible, without locks between workers.
 *
 * One batch is one transaction:
 *
 *	  fetch the oldest visible events of the partition
 *	  apply them to staged twin states (model calls, in subtransactions)
 *	  write the changed states to twin_state			 }
 *	  delete the consumed events						 } one commit:
 *	  insert alerts (+ NOTIFY) and dead letters			 } exactly once
 *	  copy the new states into shared memory (not yet visible)
 *	  COMMIT
 *	  publish the copies in the shared hash
 *
 * Error isolation without a subtransaction per event: a run of events
 * shares one subtransaction.  When event k of a run fails, the run is rolled
 * back and its staged effects undone, event k is marked dead, the events
 * before k run again in a new subtransaction, and the batch goes on after
 * k.  Each event's model is called at most twice per failure before it, and
 * a batch opens 1 + 2 * (failures) subtransactions, far from the 64 that
 * would overflow the subxid cache in normal operation.
 *
 * Shared memory is rebuilt from twin_state whenever a worker starts, so a
 * worker that died between its commit and its publication (or a crash-
 * restart, which wipes shared memory) leaves no stale twin behind; and
 * after any failed batch, since shared memory may then disagree with
 * twin_state.
 *
 * Worker 0 also maintains the queue between its batches (rotation and
 * truncation of its partitions, retention: see queue.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/detoast.h"
#include "access/xact.h"
#include "commands/async.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "portability/instr_time.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "dt_internal.h"

typedef enum DtBatchPhase
{
	DT_PHASE_IDLE,
	DT_PHASE_WORKING,			/* inside the transaction, before commit */
	DT_PHASE_COMMITTING,		/* commit may or may not have happened */
	DT_PHASE_PUBLISHING			/* committed, shared memory half updated */
} DtBatchPhase;

static int	my_partition = -1;
static DtWorkerSlot *my_slot = NULL;
static MemoryContext batch_cxt = NULL;
static MemoryContext event_cxt = NULL;
static volatile DtBatchPhase phase = DT_PHASE_IDLE;
static bool need_rebuild = true;
static Oid	known_extension = InvalidOid;
static int	backoff_ms = 0;
static uint64 seen_reload_generation = 0;
static bool retry_soon = false;	/* the batch deferred itself: run another soon */
static Oid	stopped_extension = InvalidOid; /* of the slot's stopped events at start */

/* the extension is not there yet: the transaction creating it runs */
static TransactionId wait_for_creator = InvalidTransactionId;
/* the extension is gone: the worker exits, the launcher frees its entry */
static bool extension_gone = false;

/* the events of the batch being processed (for dt_worker_recover) */
static int	batch_nevents = 0;
static int64 batch_first_id = 0;
static uint64 messages_before = 0;	/* dt_messages_sent when the batch began */

/*
 * Events to dead-letter without calling their model, when a batch fetches
 * them: the event whose model ignored its timeout until the worker was
 * terminated (recorded in the slot by the previous incarnation), and an
 * event that could not get shared memory on its own.  A handful at most.
 */
typedef enum DtDoomReason
{
	DT_DOOM_STOPPED,			/* its model ignored the timeout */
	DT_DOOM_NO_MEMORY			/* alone, it cannot be stored (memory, size) */
} DtDoomReason;

typedef struct DtDoomedEvent
{
	int64		event_id;
	DtDoomReason reason;
	int			sqlerrcode;		/* the original error, for DT_DOOM_NO_MEMORY */
	char		detail[256];
} DtDoomedEvent;

#define DT_MAX_DOOMED 16
static DtDoomedEvent doomed[DT_MAX_DOOMED];
static int	ndoomed = 0;

/*
 * After a batch failed for want of memory, batches are limited to half its
 * size, halved again at each failure down to one event, which is then
 * doomed; each success doubles the limit back up to batch_size, and 0
 * means no limit.  The events that cannot get memory on their own are
 * found in a number of batches logarithmic in the batch size, and are the
 * only ones dead-lettered (see dt_worker_note_resource_failure).
 */
static int	careful_limit = 0;

static void dt_worker_sleep(long ms);

/*
 * Start a batch.  The fetch counter is advanced before the fetch takes its
 * snapshot, so a wait_idle() that read the counter knows that any later
 * fetch sees everything committed before it read it.
 */
static void
dt_worker_start_batch(void)
{
	SpinLockAcquire(&my_slot->mutex);
	my_slot->fetches++;
	SpinLockRelease(&my_slot->mutex);
}

/*
 * A batch ended.  'published': it committed and its twins are in shared
 * memory, so every event it read counts as consumed for wait_idle():
 * 'through' is the id up to which its fetch saw all visible events of the
 * partition (the last id of a full fetch; PG_INT64_MAX when the fetch
 * emptied the partition).
 */
static void
dt_worker_end_batch(bool published, int64 through, bool sent_messages)
{
	if (published)
	{
		SpinLockAcquire(&my_slot->mutex);
		my_slot->covered_fetch = my_slot->fetches;
		my_slot->covered_through = through;
		if (sent_messages)
			my_slot->message_batches++;
		SpinLockRelease(&my_slot->mutex);
	}
	ConditionVariableBroadcast(&dt_db->progress_cv);
}

/*
 * Remember a stopped event in the slot, for the next incarnation: all of
 * them, until each is dead-lettered, so that two poison events cannot take
 * turns forever.  The slot's mutex is held.
 */
static void
dt_slot_remember_stopped(int64 event_id)
{
	int			free_slot = -1;
	int			i;

	for (i = 0; i < DT_MAX_STOPPED; i++)
	{
		if (my_slot->stopped_events[i] == event_id)
			return;
		if (my_slot->stopped_events[i] == 0 && free_slot < 0)
			free_slot = i;
	}
	/* full: the oldest goes; it will be stopped, and remembered, again */
	if (free_slot < 0)
	{
		memmove(&my_slot->stopped_events[0], &my_slot->stopped_events[1],
				sizeof(int64) * (DT_MAX_STOPPED - 1));
		free_slot = DT_MAX_STOPPED - 1;
	}
	my_slot->stopped_events[free_slot] = event_id;
}

static void
dt_worker_exit(int code, Datum arg)
{
	int64		stopped = dt_model_stopped_event();

	/* an exit from outside a transaction (publishing) may hold LWLocks */
	LWLockReleaseAll();

	/*
	 * The workers waiting for this one's load at start load their own (no
	 * purge of what it loaded: an exit may come with locks still held).
	 */
	dt_rebuild_give_up(false);
	/* chunks prepared for a batch that will never be published */
	dt_stage_abandon();
	if (stopped != 0)
		ereport(LOG,
				(errmsg("digitaltwin worker %d stopped: a model ignored digitaltwin.model_timeout on event " INT64_FORMAT,
						my_partition, stopped),
				 errdetail("The worker restarts and dead-letters that event without calling the model again.")));
	SpinLockAcquire(&my_slot->mutex);
	my_slot->pid = 0;
	my_slot->latch = NULL;
	if (stopped != 0)
	{
		dt_slot_remember_stopped(stopped);
		my_slot->stopped_extension = known_extension;
	}
	SpinLockRelease(&my_slot->mutex);
	ConditionVariableBroadcast(&dt_db->progress_cv);
}

/* ----------------------------------------------------------------
 * Applying events
 * ----------------------------------------------------------------
 */

/*
 * What a model stages besides its state (alerts, outbox commands, timers,
 * messages) lives in the worker's memory, not in the database: a
 * subtransaction the model rolls back itself (a plpgsql EXCEPTION block)
 * must take back what was staged inside it, as it takes back the model's
 * own INSERTs.  The marks of each subtransaction a model opens are kept
 * here, and an abort rewinds the staging to them.  (The runs' own
 * subtransactions are opened outside model calls and are not tracked:
 * their undo is dt_run_segment's.)
 */
typedef struct DtSubMark
{
	SubTransactionId subid;
	int			alerts;
	int			outbox;
	int			timers;
	int			messages;
} DtSubMark;

static DtSubMark *submarks = NULL;	/* in TopMemoryContext, grown on start */
static int	nsubmarks = 0;
static int	submarks_size = 0;

static void
dt_worker_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	DtSubMark  *m;

	if (dt_current_event == NULL)
		return;
	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			if (nsubmarks == submarks_size)
			{
				submarks_size = Max(submarks_size * 2, 8);
				submarks = submarks == NULL ?
					MemoryContextAlloc(TopMemoryContext, sizeof(DtSubMark) * submarks_size) :
					repalloc(submarks, sizeof(DtSubMark) * submarks_size);
			}
			m = &submarks[nsubmarks++];
			m->subid = mySubid;
			m->alerts = dt_alerts_mark();
			m->outbox = dt_outbox_mark();
			m->timers = dt_timers_undo_mark();
			m->messages = dt_messages_mark();
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
		case SUBXACT_EVENT_ABORT_SUB:
			/* subtransactions end innermost first */
			while (nsubmarks > 0 && submarks[nsubmarks - 1].subid > mySubid)
				nsubmarks--;
			if (nsubmarks == 0 || submarks[nsubmarks - 1].subid != mySubid)
				break;
			m = &submarks[--nsubmarks];
			if (event == SUBXACT_EVENT_ABORT_SUB)
			{
				dt_alerts_undo_to(m->alerts);
				dt_outbox_undo_to(m->outbox);
				dt_timers_undo_to(m->timers);
				dt_messages_undo_to(m->messages);
			}
			break;
		default:
			break;
	}
}

/* Milliseconds since 'start'. */
static double
dt_elapsed_ms(instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	return INSTR_TIME_GET_MILLISEC(now);
}

static void
dt_apply_event(DtEvent *ev)
{
	DtModel    *model = dt_model_lookup(ev->model);
	DtStagedTwin *twin;
	DtCurrentEvent current;
	MemoryContext old;
	Datum		args[3];
	bool		nulls[3] = {false, false, false};
	Datum		state;
	bool		state_null;
	int64		count;
	Datum		result;
	bool		isnull;
	instr_time	started;

	/* a timer re-armed, cancelled or ended by an earlier event: dropped */
	if (ev->timer != NULL && !dt_timers_fire_begins(ev))
		return;
	if (model == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", ev->model),
				 errdetail("The model was dropped after the event was queued.")));
	if (model->broken)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("a function of model \"%s\" no longer exists", ev->model),
				 errhint("Switch the model to existing functions with digitaltwin.alter_model(), or drop it.")));
	/* DROP ROLE run from another database cannot see this one's models */
	if (!dt_model_owner_exists(model->owner))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the owner of model \"%s\" no longer exists", ev->model),
				 errdetail("Role %u was dropped from another database, where the model could not be seen.",
						   model->owner),
				 errhint("Drop the model and create it again as an existing role.")));
	/* its owner may have become a superuser since the model was created */
	if (!dt_allow_superuser_models && superuser_arg(model->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("model \"%s\" is owned by a superuser", ev->model),
				 errhint("Set digitaltwin.allow_superuser_models = on, or recreate the model as an ordinary role.")));

	twin = dt_stage_get(model, ev->twin_id);
	dt_stage_save_undo(twin);

	INSTR_TIME_SET_CURRENT(started);
	old = MemoryContextSwitchTo(event_cxt);
	current.model = model;
	current.event = ev;
	nsubmarks = 0;
	dt_current_event = &current;
	args[0] = CStringGetTextDatum(ev->twin_id);

	if (twin->has_state)
	{
		state = twin->state;
		state_null = false;
		count = twin->event_count;
	}
	else
	{
		state = (Datum) 0;
		state_null = true;
		count = 0;
		if (OidIsValid(model->init))
		{
			state = dt_model_call(model, true, 1, args, nulls, &state_null);
			if (state_null)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("init function %s of model \"%s\" returned no state for twin \"%s\"",
								format_procedure(model->init), model->name, ev->twin_id),
						 errdetail("The event cannot be applied to a twin without a starting state."),
						 errhint("Make the init function return a state for every twin id, for instance a default when no record is found.")));
			dt_check_state(model, state);
		}
	}

	args[1] = state;
	nulls[1] = state_null;
	args[2] = JsonbPGetDatum(ev->payload);
	result = dt_model_call(model, false, 3, args, nulls, &isnull);
	if (!isnull)
		dt_check_state(model, result);
	dt_current_event = NULL;
	MemoryContextSwitchTo(old);

	if (isnull)
	{
		/* the model ended the twin, and its timers with it */
		twin->has_state = false;
		twin->event_count = 0;
		dt_timers_twin_ended(model->id, ev->twin_id);
	}
	else
	{
		dt_stage_count_twin(twin);
		twin->state = dt_stage_own_datum(result, model->typlen, model->typbyval);
		twin->has_state = true;
		twin->event_count = count + 1;
	}
	twin->dirty = true;
	twin->updated_at = GetCurrentStatementStartTimestamp();
	MemoryContextReset(event_cxt);
	dt_model_stats_applied(model->id, dt_elapsed_ms(started));
}

/*
 * A part of an error, as a dead letter keeps it: a model's error may carry
 * a message or detail of any size, and the dead letter (one row, written
 * in the batch) must not fail the batch for it.  Longer parts are cut, and
 * say so.
 */
#define DT_ERROR_PART_MAX 8192

static char *
dt_error_part(const char *part)
{
	int			len = strlen(part);

	if (len <= DT_ERROR_PART_MAX)
		return MemoryContextStrdup(batch_cxt, part);
	len = pg_mbcliplen(part, len, DT_ERROR_PART_MAX);
	return MemoryContextStrdup(batch_cxt,
							   psprintf("%.*s... (cut at %d bytes)", len, part, DT_ERROR_PART_MAX));
}

static void
dt_mark_dead(DtEvent *ev, int sqlerrcode, const char *message)
{
	ev->dead = true;
	strlcpy(ev->sqlstate, unpack_sql_state(sqlerrcode), sizeof(ev->sqlstate));
	ev->error = dt_error_part(message ? message : "unknown error");
}

static void
dt_record_failure(DtEvent *ev, ErrorData *edata)
{
	/* a cancel is the timeout's only if our timer fired */
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && dt_model_call_timed_out())
		dt_mark_dead(ev, ERRCODE_QUERY_CANCELED,
					 psprintf("model \"%s\" ran longer than digitaltwin.model_timeout (%d ms)",
							  ev->model, dt_model_timeout_ms));
	else
	{
		dt_mark_dead(ev, edata->sqlerrcode, edata->message);
		/* what a dead letter keeps of the error besides its message */
		if (edata->detail)
			ev->error_detail = dt_error_part(edata->detail);
		if (edata->hint)
			ev->error_hint = dt_error_part(edata->hint);
		if (edata->context)
			ev->error_context = dt_error_part(edata->context);
	}
}

/*
 * Apply events [start, end) that are not dead, in one subtransaction.
 * Returns -1 on success, or the index of the event that failed; then the
 * run has been rolled back and its staged effects undone.
 */
static int
dt_run_segment(DtEvent *events, int start, int end)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	int			undo_mark = dt_stage_undo_mark();
	int			alert_mark = dt_alerts_mark();
	int			timer_mark = dt_timers_undo_mark();
	int			outbox_mark = dt_outbox_mark();
	int			message_mark = dt_messages_mark();
	volatile int current = -1;
	int			failed = -1;
	int			i;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);

	PG_TRY();
	{
		for (i = start; i < end; i++)
		{
			if (events[i].dead)
				continue;
			current = i;
			dt_apply_event(&events[i]);
		}
		current = -1;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		dt_current_event = NULL;
		dt_model_timeouts_disarm();
		MemoryContextSwitchTo(batch_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		/* what the failed call left in the session, beyond the subxact */
		dt_model_forget_session_state();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		MemoryContextReset(event_cxt);

		/* not an event's fault: the whole batch fails */
		if (current < 0)
			ReThrowError(edata);

		dt_stage_undo_to(undo_mark);
		dt_alerts_undo_to(alert_mark);
		dt_timers_undo_to(timer_mark);
		dt_outbox_undo_to(outbox_mark);
		dt_messages_undo_to(message_mark);
		failed = current;
		dt_record_failure(&events[failed], edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	return failed;
}

static bool
dt_doom_event(int64 event_id, DtDoomReason reason, int sqlerrcode,
			  const char *detail)
{
	DtDoomedEvent *d;

	if (ndoomed == DT_MAX_DOOMED)
		return false;			/* it will fail again and be doomed then */
	d = &doomed[ndoomed++];
	d->event_id = event_id;
	d->reason = reason;
	d->sqlerrcode = sqlerrcode;
	strlcpy(d->detail, detail ? detail : "", sizeof(d->detail));
	return true;
}

/* Event ids start over with a new extension: forget the doomed ones. */
static void
dt_worker_forget_doomed_events(void)
{
	ndoomed = 0;
	careful_limit = 0;
	SpinLockAcquire(&my_slot->mutex);
	memset(my_slot->stopped_events, 0, sizeof(my_slot->stopped_events));
	SpinLockRelease(&my_slot->mutex);
}

/* Mark the doomed events of a batch dead before any model runs. */
static void
dt_mark_doomed(DtEvent *events, int n)
{
	int			i;
	int			d;

	for (d = 0; d < ndoomed; d++)
	{
		for (i = 0; i < n; i++)
		{
			if (events[i].id != doomed[d].event_id)
				continue;
			if (doomed[d].reason == DT_DOOM_STOPPED)
				dt_mark_dead(&events[i], ERRCODE_QUERY_CANCELED,
							 psprintf("model \"%s\" ran longer than digitaltwin.model_timeout (%d ms) "
									  "and did not stop when cancelled; the worker was restarted",
									  events[i].model, dt_model_timeout_ms));
			else
				dt_mark_dead(&events[i], doomed[d].sqlerrcode, doomed[d].detail);
			break;
		}
	}
}

/* After commit: forget the doomed events that this batch dead-lettered. */
static void
dt_forget_doomed(DtEvent *events, int n)
{
	int			d = 0;

	while (d < ndoomed)
	{
		bool		gone = false;
		int			i;

		for (i = 0; i < n && !gone; i++)
			gone = (events[i].id == doomed[d].event_id);
		if (!gone)
		{
			d++;
			continue;
		}
		if (doomed[d].reason == DT_DOOM_STOPPED)
		{
			int			s;

			SpinLockAcquire(&my_slot->mutex);
			for (s = 0; s < DT_MAX_STOPPED; s++)
			{
				if (my_slot->stopped_events[s] == doomed[d].event_id)
					my_slot->stopped_events[s] = 0;
			}
			SpinLockRelease(&my_slot->mutex);
		}
		doomed[d] = doomed[--ndoomed];
	}
}

static void
dt_apply_events(DtEvent *events, int n)
{
	int			start = 0;
	int			end = n;

	if (ndoomed > 0)
		dt_mark_doomed(events, n);

	while (start < n)
	{
		int			failed = dt_run_segment(events, start, end);

		if (failed < 0)
		{
			start = end;
			end = n;
		}
		else
		{
			/* re-run what came before the failed event, then go on */
			end = failed;
			if (start == end)
			{
				start = failed + 1;
				end = n;
			}
		}
	}
}

/* ----------------------------------------------------------------
 * Rebuilding the partition from the durable state
 * ----------------------------------------------------------------
 */
/*
 * Purge this worker's partition and load it again from twin_state, with
 * the batch's snapshot; after a restart, from the load at start of every
 * partition (rebuild.c), done here or by another worker.
 */
static void
dt_worker_rebuild(void)
{
	instr_time	start;
	instr_time	duration;
	int64		loaded;
	int64		others = 0;
	DtRebuildRole role;

	INSTR_TIME_SET_CURRENT(start);
	pgstat_report_activity(STATE_RUNNING, "digitaltwin: loading twins");
	role = dt_rebuild_role(my_partition, seen_reload_generation, known_extension);
	if (role == DT_REBUILD_ALL)
		loaded = dt_rebuild_all(my_partition, seen_reload_generation,
								known_extension, &others);
	else if (role == DT_REBUILD_OWN)
		loaded = dt_rebuild_partition(my_partition, known_extension);
	else
		loaded = dt_rebuild_take(my_partition, known_extension);
	dt_timers_load(my_partition, dt_shared->nworkers);
	need_rebuild = false;
	pgstat_report_activity(STATE_RUNNING, "digitaltwin: processing events");

	INSTR_TIME_SET_CURRENT(duration);
	INSTR_TIME_SUBTRACT(duration, start);
	ereport(LOG,
			(errmsg("digitaltwin worker %d loaded " INT64_FORMAT " twins and " INT64_FORMAT " timers in %.1f ms",
					my_partition, loaded, dt_timers_pending(),
					INSTR_TIME_GET_MILLISEC(duration)),
			 role == DT_REBUILD_ALL ?
			 errdetail("It loaded every partition at start: " INT64_FORMAT " more twins, of the other workers.",
					   others) :
			 role == DT_REBUILD_TAKEN ?
			 errdetail("Its twins were loaded at start by another worker.") : 0));
}

/* ----------------------------------------------------------------
 * One batch
 * ----------------------------------------------------------------
 */

static void
dt_worker_update_stats(int nevents, int ndead, int nalerts)
{
	TimestampTz now = GetCurrentTimestamp();

	pg_atomic_fetch_add_u64(&my_slot->events_processed, nevents - ndead);
	pg_atomic_fetch_add_u64(&my_slot->dead_letters, ndead);
	pg_atomic_fetch_add_u64(&my_slot->alerts, nalerts);
	pg_atomic_fetch_add_u64(&my_slot->batches, 1);

	SpinLockAcquire(&my_slot->mutex);
	my_slot->last_batch_at = now;
	my_slot->last_error[0] = '\0';
	if (my_slot->window_start == 0)
		my_slot->window_start = now;
	my_slot->window_events += nevents;
	if (TimestampDifferenceExceeds(my_slot->window_start, now, 1000))
	{
		long		secs;
		int			usecs;

		TimestampDifference(my_slot->window_start, now, &secs, &usecs);
		my_slot->events_per_second = my_slot->window_events /
			(secs + usecs / 1000000.0);
		my_slot->window_start = now;
		my_slot->window_events = 0;
	}
	SpinLockRelease(&my_slot->mutex);
}

/*
 * Check that the extension exists and is the one we know; returns false
 * when there is nothing to do in this database.
 */
static bool
dt_worker_check_extension(void)
{
	Oid			ext = dt_extension_oid();

	if (!OidIsValid(ext))
	{
		TransactionId creator;

		/*
		 * Not created yet (CREATE EXTENSION started this worker and has not
		 * committed): wait for it.  Otherwise it was dropped, or the
		 * creation rolled back: the worker's job is over.
		 */
		LWLockAcquire(&dt_shared->lock, LW_SHARED);
		creator = dt_db->creating_xid;
		LWLockRelease(&dt_shared->lock);
		if (TransactionIdIsValid(creator) && TransactionIdIsInProgress(creator))
		{
			wait_for_creator = creator;
			return false;
		}

		/*
		 * The creator may have committed between our look at the catalog
		 * and its end: look again with a fresh catalog snapshot before
		 * deciding the extension is gone (this batch's snapshot is older:
		 * the next batch does the work).
		 */
		InvalidateCatalogSnapshot();
		if (OidIsValid(dt_extension_oid()))
			retry_soon = true;
		else
			extension_gone = true;
		return false;
	}
	if (ext != known_extension)
	{
		/*
		 * created, or dropped and created again: forget everything (the
		 * doomed events too, after a re-creation: event ids start over;
		 * at the first check, only if the events stopped by the previous
		 * incarnation were of another extension)
		 */
		if (OidIsValid(known_extension) ||
			(OidIsValid(stopped_extension) && stopped_extension != ext))
			dt_worker_forget_doomed_events();
		stopped_extension = InvalidOid;
		dt_stage_forget_plans();
		dt_alerts_forget_plans();
		dt_timers_forget_plans();
		dt_outbox_forget_plans();
		dt_messages_forget_plans();
		dt_hold_forget_plans();
		dt_history_forget_plans();
		dt_model_stats_forget_plans();
		need_rebuild = true;
		known_extension = ext;
		dt_models_refresh(true);
	}
	return true;
}

/*
 * Small batches cost nearly as much as large ones: a transaction, a fetch
 * and a commit that waits for its WAL flush.  Under a stream of one-event
 * transactions, a worker woken by every commit would run batches of a few
 * events back to back and spend most of its CPU, taken from the senders on
 * a small machine, on that fixed cost.  So while the recent batches have
 * been small (a moving average of their sizes under DT_SMALL_BATCH), the
 * next batch waits until digitaltwin.batch_delay has passed since the last
 * one with events ended: the events of that interval make one batch.  After
 * a pause (that batch ended longer ago) nothing waits, so a lone event is
 * not delayed; nor is a stream of larger transactions, whose batches are
 * large even when one of them (an occasional single event) is not.  The
 * wait ignores the latch (commits keep setting it) and lasts at most
 * batch_delay (1 s at most), which bounds how long it can hold up a
 * shutdown or a wait_idle().
 */
#define DT_SMALL_BATCH 32

static double recent_batch_size = DT_SMALL_BATCH;
static TimestampTz last_batch_end;	/* of the last batch that had events */

static void
dt_worker_note_batch(int n)
{
	if (n == 0)
		return;
	recent_batch_size = 0.75 * recent_batch_size + 0.25 * n;
	last_batch_end = GetCurrentTimestamp();
}

static void
dt_worker_spread_small_batches(void)
{
	long		elapsed_ms;

	if (dt_batch_delay_ms <= 0 || recent_batch_size >= DT_SMALL_BATCH)
		return;
	elapsed_ms = TimestampDifferenceMilliseconds(last_batch_end, GetCurrentTimestamp());
	if (elapsed_ms >= dt_batch_delay_ms)
		return;
	dt_worker_sleep(dt_batch_delay_ms - elapsed_ms);
}

/*
 * A batch of 50000 events allocates some 15 MB in its context (the events'
 * strings, a copy of each new state, the undo log), all freed when the
 * batch ends.  glibc returns large freed blocks to the kernel (they are
 * mmapped, or trimmed off the top of the heap), so the next batch faulted
 * the same memory in again, page by page: a quarter of the workers' CPU
 * time in a virtual machine.  A worker is a long-lived process whose batches
 * are alike, so it keeps freed memory for the next batch instead.
 */
static void
dt_worker_keep_freed_memory(void)
{
#ifdef __GLIBC__
	(void) mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024);
	(void) mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
#endif
}

/*
 * The batch's events: the queue's, in id order, and the due timers', in
 * due order, merged by time (a timer due before an event was queued comes
 * first), which keeps each twin's events and timers in their own order.
 */
static DtEvent *
dt_merge_timers(DtEvent *events, int nevents, DtEvent *timers, int ntimers)
{
	DtEvent    *all = palloc(sizeof(DtEvent) * (nevents + ntimers));
	int			e = 0;
	int			t = 0;
	int			n = 0;

	while (e < nevents || t < ntimers)
	{
		if (t < ntimers &&
			(e == nevents || timers[t].timer_due < events[e].enqueued_at))
			all[n++] = timers[t++];
		else
			all[n++] = events[e++];
	}
	return all;
}

/*
 * Whether this batch must wait: another transaction changed twin_state
 * (a restore, a repair), and this batch's snapshot may see the change
 * without the twins in shared memory having it.  Read after the snapshot
 * was taken (reload.c): a change still committing makes the worker try
 * again shortly; one committed since the last look makes it reload, in
 * the next batch, whose snapshot is taken after the commit.
 */
static bool
dt_worker_reload_deferred(void)
{
	uint64		generation;

	if (pg_atomic_read_u32(&dt_db->reload_pending) > 0)
	{
		retry_soon = true;
		return true;
	}
	/* the generation moves before 'pending' comes down: read in that order */
	pg_read_barrier();
	generation = pg_atomic_read_u64(&dt_db->reload_generation);
	if (generation == seen_reload_generation)
		return false;
	seen_reload_generation = generation;
	need_rebuild = true;
	retry_soon = true;
	return true;
}

static int
dt_worker_run_batch(void)
{
	DtEvent    *events = NULL;
	DtEvent    *timers = NULL;
	DtEvent    *batch;
	int			ntimers;
	int			nbatch;
	int			nevents;
	int			napply;			/* of them, to apply: not held */
	int64		last_id;
	int			ndead = 0;
	int			nalerts = 0;
	int			limit;
	int			i;

	/* no event is this batch's before its fetch (a rebuild may fail first) */
	batch_nevents = 0;
	batch_first_id = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());

	if (!dt_worker_check_extension())
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return 0;
	}

	/*
	 * The registry first, as DROP EXTENSION locks the extension's tables
	 * (in the order they were created: models, then the queue): a batch
	 * that took the queue and then waited for the registry would deadlock
	 * with it.  ROW SHARE, held to the commit, keeps out the switches of
	 * alter_model(), pause_model() and resume_model() (lifecycle.c); the
	 * snapshot is taken again once it is held, so that the batch sees a
	 * switch it waited for whole, and the reload it may call for.
	 */
	LockRelationOid(dt_models_relid(), RowShareLock);
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());

	if (dt_worker_reload_deferred())
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return 0;
	}
	pgstat_report_activity(STATE_RUNNING, "digitaltwin: processing events");
	if (need_rebuild)
		dt_worker_rebuild();
	else if (!dt_timers_loaded())
		dt_timers_load(my_partition, dt_shared->nworkers);

	dt_worker_start_batch();
	phase = DT_PHASE_WORKING;
	MemoryContextSwitchTo(batch_cxt);

	/*
	 * One snapshot for the fetch and the models, taken after the batch was
	 * counted (see wait_idle) and after any rebuild: a model must see what
	 * its event's sender committed before the event, such as the record a
	 * first event's init function reads.
	 */
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());

	limit = careful_limit > 0 ? Min(careful_limit, dt_batch_size) : dt_batch_size;

	/*
	 * Running out of memory in the fetch (its candidates are copies of the
	 * events' rows) cuts the next batch down as a failure later in the
	 * batch does.  A fetch of a single event that fails is not a batch of
	 * one to doom: no event is known yet, so it is retried.
	 */
	batch_nevents = limit > 1 ? limit : 0;
	nevents = dt_fetch_events(my_partition, dt_shared->nworkers, limit, &events);
	last_id = nevents > 0 ? events[nevents - 1].id : 0;
	/* forget the twins of dropped models as soon as we notice the drop */
	if (dt_models_cover(events, nevents))
	{
		dt_store_purge_models(my_partition, dt_shared->nworkers, dt_model_id_live);
		dt_twin_count_forget(my_partition, dt_model_id_live);
		dt_timers_purge_models(dt_model_id_live);
		dt_timers_unpark();
	}
	/* events of paused models are held, and deleted from the queue below */
	napply = dt_models_paused > 0 ? dt_hold_paused_events(events, nevents) : nevents;
	dt_timers_begin(batch_cxt);

	/*
	 * Due timers join the batch, up to the same limit; but while batches are
	 * being cut down after a failure for want of memory, events and timers
	 * go in separate batches, so that the limit can come down to a single
	 * event (or fire) and doom just that one.
	 */
	ntimers = dt_timers_claim(GetCurrentTimestamp(),
							  (careful_limit > 0 && nevents > 0) ? 0 : limit, &timers);
	batch = ntimers > 0 ? dt_merge_timers(events, napply, timers, ntimers) : events;
	nbatch = napply + ntimers;
	batch_nevents = nbatch;
	batch_first_id = nbatch > 0 ? batch[0].id : 0;
	if (nevents + ntimers > 0)
	{
		dt_stage_begin(batch_cxt, my_partition);
		dt_alerts_begin(batch_cxt);
		dt_outbox_begin(batch_cxt);
		dt_messages_begin(batch_cxt);
		messages_before = dt_messages_sent;
		dt_model_stats_begin(my_partition);
		dt_apply_events(batch, nbatch);

		dt_stage_persist();
		for (i = 0; i < nbatch; i++)
		{
			if (batch[i].dead && batch[i].timer != NULL)
				dt_timers_fire_failed(&batch[i]);
		}
		dt_timers_persist();
		dt_delete_events(events, nevents);
		for (i = 0; i < nbatch; i++)
		{
			if (batch[i].dead)
			{
				dt_dead_letter(&batch[i]);
				ndead++;
			}
		}
		dt_model_stats_flush(batch, nbatch);
		nalerts = dt_alerts_flush();
		(void) dt_outbox_flush();
		(void) dt_messages_flush();
		dt_history_write(batch, nbatch);
		dt_stage_prepare_publish();
		/* a model's LISTEN would take effect at commit: cancel it */
		Async_UnlistenAll();
	}

	SPI_finish();
	PopActiveSnapshot();
	phase = DT_PHASE_COMMITTING;
	CommitTransactionCommand();

	phase = DT_PHASE_PUBLISHING;
	if (nevents + ntimers > 0)
	{
		dt_stage_publish(my_slot);
		dt_model_stats_committed();
	}
	dt_timers_publish();
	phase = DT_PHASE_IDLE;
	dt_alerts_announce();
	dt_outbox_announce();
	/* only dead letters that exist: those of a committed batch */
	for (i = 0; i < nbatch; i++)
	{
		if (batch[i].dead)
			dt_log_dead_letter(&batch[i]);
	}

	if (nbatch > 0)
		dt_worker_update_stats(nbatch, ndead, nalerts);
	if (ndoomed > 0)
		dt_forget_doomed(batch, nbatch);
	if (careful_limit > 0)
		careful_limit = careful_limit >= dt_batch_size / 2 ? 0 : careful_limit * 2;
	dt_worker_end_batch(true, nevents < limit ? PG_INT64_MAX : last_id,
						nbatch > 0 && dt_messages_sent != messages_before);
	batch_nevents = 0;
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextReset(batch_cxt);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	backoff_ms = 0;
	return nbatch;
}

/* Until the next poll, or the next timer of the partition falls due. */
static long
dt_worker_wait_ms(void)
{
	TimestampTz next_due = dt_timers_next_due();
	long		ms = dt_poll_interval_ms;

	if (next_due != DT_NOEND)
	{
		TimestampTz now = GetCurrentTimestamp();

		if (next_due <= now)
			return 0;
		/* round up: woken before the due time, the batch would find nothing */
		ms = Min(ms, (long) ((next_due - now + 999) / 1000));
	}
	return ms;
}

/*
 * Sleep for ms milliseconds, woken only by a signal that needs an answer
 * (SIGTERM, SIGHUP): the latch is set by every commit of events too, so it
 * is reset and the wait resumed until the time is up.
 */
static void
dt_worker_sleep(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

		CHECK_FOR_INTERRUPTS();
		if (left <= 0 || ConfigReloadPending)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * A batch failed for want of memory (digitaltwin.max_memory, DSA or local
 * memory) or past a size limit of PostgreSQL (54xxx).  A batch of many
 * events goes again in batches of half its size; a batch of one event dooms
 * that event: it is dead-lettered by the next batch, so that events that
 * cannot be stored never hold up the others.  Returns true when the batch
 * should be retried at once.
 */
static bool
dt_worker_note_resource_failure(ErrorData *edata)
{
	bool		resources = edata->sqlerrcode == ERRCODE_OUT_OF_MEMORY ||
		ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
	int			n = batch_nevents;

	/*
	 * Whatever the error, the batch is over: a later failure (the next
	 * batch's rebuild running out of memory) must not doom its event.
	 */
	batch_nevents = 0;
	if (!resources || n == 0)
		return false;
	if (n == 1)
	{
		if (!dt_doom_event(batch_first_id, DT_DOOM_NO_MEMORY, edata->sqlerrcode,
						   edata->message ? edata->message : "out of memory"))
			return false;
	}
	else
		careful_limit = n / 2;
	return true;
}

/*
 * ERROR outside any model call: abandon the batch, log, back off, go on.
 */
static void
dt_worker_recover(void)
{
	DtBatchPhase failed_phase;
	ErrorData  *edata;
	bool		out_of_memory;

	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	disable_all_timeouts(false);
	QueryCancelPending = false;

	/*
	 * An error while publishing comes after the commit: there is no
	 * transaction for the abort below to release the LWLocks (a stripe of
	 * the shared table) or the condition variable, and dt_stage_abandon()
	 * takes stripe locks again.
	 */
	LWLockReleaseAll();
	ConditionVariableCancelSleep();

	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortCurrentTransaction();
	dt_rebuild_give_up(true);

	dt_current_event = NULL;
	dt_stage_abandon();
	dt_timers_abandon();
	dt_alerts_abandon();
	dt_outbox_abandon();
	dt_model_stats_abandon();
	/*
	 * After a failure around the commit we cannot know what part of shared
	 * memory is current; after any other, reloading also repairs whatever
	 * disagreement between shared memory and twin_state caused it.  Either
	 * way, reload the partition; except when the batch only ran out of
	 * shared memory before commit: dt_stage_abandon() gave back what it
	 * took, and a reload would free this partition's twins for the other
	 * workers to take, leaving it unable to load them again.
	 */
	failed_phase = phase;
	if (phase != DT_PHASE_IDLE &&
		!(phase == DT_PHASE_WORKING && edata->sqlerrcode == ERRCODE_OUT_OF_MEMORY))
		need_rebuild = true;
	phase = DT_PHASE_IDLE;

	SpinLockAcquire(&my_slot->mutex);
	strlcpy(my_slot->last_error, edata->message ? edata->message : "unknown error",
			sizeof(my_slot->last_error));
	/* the batch may have committed messages it will never count */
	if (failed_phase == DT_PHASE_COMMITTING || failed_phase == DT_PHASE_PUBLISHING)
		my_slot->message_batches++;
	SpinLockRelease(&my_slot->mutex);
	dt_worker_end_batch(false, 0, false);
	out_of_memory = dt_worker_note_resource_failure(edata);

	FreeErrorData(edata);
	FlushErrorState();
	MemoryContextReset(batch_cxt);
	MemoryContextReset(event_cxt);
	RESUME_INTERRUPTS();

	if (out_of_memory)
	{
		backoff_ms = 0;
		return;
	}
	/* not woken by commits: they must not turn a failing batch into a busy loop */
	backoff_ms = Min(Max(backoff_ms * 2, 1000), 30000);
	dt_worker_sleep(backoff_ms);
}

/*
 * Wait for the transaction creating the extension to end (the extension
 * is then there, or will never be): a lock wait, which a shutdown
 * interrupts.
 */
static void
dt_worker_wait_for_creator(void)
{
	TransactionId xid = wait_for_creator;

	wait_for_creator = InvalidTransactionId;
	pgstat_report_activity(STATE_RUNNING, "digitaltwin: waiting for CREATE EXTENSION to commit");
	StartTransactionCommand();
	XactLockTableWait(xid, NULL, NULL, XLTW_None);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Take worker slot 'partition' of database entry 'index', as the launcher
 * asked (bgw_extra names the database and the entry's incarnation): false
 * if the entry has been given to another database since, or another worker
 * holds the slot (started by an earlier launcher).
 */
static bool
dt_worker_claim_slot(int index, int partition, Oid dboid, uint32 incarnation)
{
	DtDatabase *db;
	bool		claimed = false;

	if (index < 0 || index >= dt_shared->ndatabases ||
		partition < 0 || partition >= dt_shared->nworkers)
		return false;
	db = dt_database_entry(index);
	LWLockAcquire(&dt_shared->lock, LW_SHARED);
	if (db->state != DT_DB_FREE && db->dboid == dboid &&
		db->incarnation == incarnation)
	{
		DtWorkerSlot *slot = &db->slots[partition];

		SpinLockAcquire(&slot->mutex);
		if (slot->pid == 0)
		{
			slot->pid = MyProcPid;
			slot->latch = MyLatch;
			claimed = true;
		}
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(&dt_shared->lock);
	if (claimed)
	{
		dt_database_set(db);
		my_slot = &db->slots[partition];
	}
	return claimed;
}

void
digitaltwin_worker_main(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;
	int64		stopped[DT_MAX_STOPPED];
	struct
	{
		Oid			dboid;
		uint32		incarnation;
	}			extra;
	int			i;

	my_partition = DatumGetInt32(main_arg) % DT_MAX_WORKERS;
	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	dt_is_worker = true;

	/* by OID: the database may be renamed while it is served */
	BackgroundWorkerInitializeConnectionByOid(extra.dboid, InvalidOid, 0);
	if (!dt_worker_claim_slot(DatumGetInt32(main_arg) / DT_MAX_WORKERS,
							  my_partition, extra.dboid, extra.incarnation))
		proc_exit(0);

	/*
	 * The worker's own statements run as the bootstrap superuser: they must
	 * resolve nothing through a schema others can write (DESIGN.md, trust
	 * rule 1).  Model calls set their own search_path in a nest level that
	 * ends with the call, so this one is always back for the next statement.
	 */
	SetConfigOption("search_path", DT_TRUSTED_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Each fetch takes a new snapshot after its batch was counted (wait_idle
	 * relies on it): whatever the database's default_transaction_isolation
	 * says, a batch is READ COMMITTED.
	 */
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	dt_model_timeouts_init();

	SpinLockAcquire(&my_slot->mutex);
	/* a predecessor may have died between committing messages and counting them */
	my_slot->message_batches++;
	my_slot->window_start = 0;
	my_slot->window_events = 0;
	my_slot->events_per_second = 0;
	memcpy(stopped, my_slot->stopped_events, sizeof(stopped));
	stopped_extension = my_slot->stopped_extension;
	SpinLockRelease(&my_slot->mutex);
	for (i = 0; i < DT_MAX_STOPPED; i++)
	{
		if (stopped[i] != 0)
			dt_doom_event(stopped[i], DT_DOOM_STOPPED, ERRCODE_QUERY_CANCELED, NULL);
	}
	before_shmem_exit(dt_worker_exit, (Datum) 0);
	RegisterSubXactCallback(dt_worker_subxact_callback, NULL);

	dt_attach_store();
	dt_register_cache_callbacks();
	/* the previous coordinator may have died before publishing a rotation */
	if (my_partition == 0)
		dt_queue_forget_generation();
	dt_worker_keep_freed_memory();
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "digitaltwin batch",
									  ALLOCSET_DEFAULT_SIZES);
	event_cxt = AllocSetContextCreate(TopMemoryContext, "digitaltwin event",
									  ALLOCSET_DEFAULT_SIZES);

	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		dt_worker_recover();
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		int			n;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		n = dt_worker_run_batch();
		if (extension_gone)
			break;
		if (TransactionIdIsValid(wait_for_creator))
		{
			dt_worker_wait_for_creator();
			continue;
		}
		dt_worker_note_batch(n);
		if (my_partition == 0)
		{
			dt_queue_maintain();
			dt_log_partitions_maintain();
		}
		if (n >= dt_batch_size)
			continue;
		if (retry_soon)
		{
			retry_soon = false;
			dt_worker_sleep(10);
			continue;
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 dt_worker_wait_ms(), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		dt_worker_spread_small_batches();
	}

	ereport(LOG,
			(errmsg("digitaltwin worker %d exits: the extension is gone from its database",
					my_partition)));
	SpinLockAcquire(&my_slot->mutex);
	my_slot->extension_gone = true;
	SpinLockRelease(&my_slot->mutex);
	dt_launcher_wake();
	proc_exit(0);
}
