/*-------------------------------------------------------------------------
 *
 * rehearsal.c
 *	  rehearse(): a candidate version of a model run over the model's
 *	  logged events, in event order, in a sandbox.
 *
 * The rehearsal runs in the caller's backend, not in the workers, and
 * touches nothing live: its twins are in this backend's memory (written to
 * digitaltwin.rehearsal_twins at the end), and what the candidate stages
 * (alerts, outbox messages, messages to twins, timers) goes through the
 * same staging as in a worker's batch (alerts.c, outbox.c, messages.c), from
 * which it is copied to the rehearsal_* tables or dropped: nothing is
 * notified, delivered or queued.  Timers go to the rehearsal's own timers
 * (dt_timer_hooks) and fall due in event time: before each event, every
 * timer due at or before its event time fires, in due order, so a day of
 * events takes as long as processing them.  Each call runs in a
 * subtransaction that is rolled back once what it staged was copied: what
 * the candidate itself writes to other tables never stays.  An error fails
 * the event (a row of rehearsal_dead_letters), not the rehearsal.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/pairingheap.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_rehearse);

/* a twin of the sandbox */
typedef struct DtRehearsalTwin
{
	char		twin_id[DT_TWIN_ID_MAXLEN + 1]; /* hash key */
	bool		has_state;
	Datum		state;
	int64		event_count;
} DtRehearsalTwin;

/* a timer of the sandbox: one per twin and name */
typedef struct DtRehearsalTimerKey
{
	char		twin_id[DT_TWIN_ID_MAXLEN + 1];
	char		name[NAMEDATALEN * 2];
} DtRehearsalTimerKey;

typedef struct DtRehearsalTimer
{
	DtRehearsalTimerKey key;	/* hash key */
	TimestampTz due_at;
	bool		has_every;
	Interval	every;
	Jsonb	   *payload;
	int64		fire_id;		/* the id of the event that armed it */
	uint64		generation;		/* of its heap node still valid */
} DtRehearsalTimer;

/* heap node; stale when its generation is not the timer's */
typedef struct DtRehearsalDue
{
	pairingheap_node node;
	DtRehearsalTimerKey key;
	TimestampTz due_at;
	uint64		generation;
} DtRehearsalDue;

typedef struct DtRehearsal
{
	int64		id;
	DtModel		candidate;
	MemoryContext cxt;			/* the sandbox */
	MemoryContext call_cxt;		/* one call's staging */
	MemoryContext row_cxt;		/* one logged event or fire, as read */
	HTAB	   *twins;
	HTAB	   *timers;
	pairingheap *due;
	uint64		generation;
	int64		events;
	int64		fired;
	int64		failed;
	List	   *undo;			/* DtTimerUndo of the call, in call_cxt */
	FmgrInfo	to_jsonb;
} DtRehearsal;

/* a timer as it was before the current call changed it */
typedef struct DtTimerUndo
{
	DtRehearsalTimerKey key;
	bool		existed;
	DtRehearsalTimer prev;
} DtTimerUndo;

static DtRehearsal *current = NULL;	/* the rehearsal running, for the hooks */

/* ----------------------------------------------------------------
 * Timers, in event time
 * ----------------------------------------------------------------
 */
static int
dt_rehearsal_due_cmp(const pairingheap_node *a, const pairingheap_node *b, void *arg)
{
	const DtRehearsalDue *x = pairingheap_const_container(DtRehearsalDue, node, a);
	const DtRehearsalDue *y = pairingheap_const_container(DtRehearsalDue, node, b);

	/* pairingheap keeps the greatest on top: the earliest due is greatest */
	if (x->due_at != y->due_at)
		return x->due_at < y->due_at ? 1 : -1;
	return 0;
}

static void
dt_rehearsal_timer_key(DtRehearsalTimerKey *key, const char *twin_id, const char *name)
{
	memset(key, 0, sizeof(*key));
	strlcpy(key->twin_id, twin_id, sizeof(key->twin_id));
	strlcpy(key->name, name, sizeof(key->name));
}

static void
dt_rehearsal_arm(DtRehearsal *r, DtRehearsalTimer *t, TimestampTz due_at)
{
	DtRehearsalDue *d = MemoryContextAlloc(r->cxt, sizeof(DtRehearsalDue));

	t->due_at = due_at;
	t->generation = ++r->generation;
	d->key = t->key;
	d->due_at = due_at;
	d->generation = t->generation;
	pairingheap_add(r->due, &d->node);
}

/*
 * Before a call changes a timer: what to put back if the call fails (a
 * failed event arms and cancels nothing, as in a worker's batch).
 */
static void
dt_rehearsal_save_undo(DtRehearsal *r, const DtRehearsalTimerKey *key)
{
	MemoryContext old = MemoryContextSwitchTo(r->call_cxt);
	DtTimerUndo *u = palloc0(sizeof(DtTimerUndo));
	DtRehearsalTimer *t = hash_search(r->timers, key, HASH_FIND, NULL);

	u->key = *key;
	u->existed = (t != NULL);
	if (t != NULL)
		u->prev = *t;
	r->undo = lappend(r->undo, u);
	MemoryContextSwitchTo(old);
}

/*
 * After a call: a failed one's timer changes are undone (its payloads
 * freed), a successful one's replaced payloads are freed.
 */
static void
dt_rehearsal_end_undo(DtRehearsal *r, bool failed)
{
	int			i;

	for (i = list_length(r->undo) - 1; i >= 0; i--)
	{
		DtTimerUndo *u = list_nth(r->undo, i);
		DtRehearsalTimer *t = hash_search(r->timers, &u->key, HASH_FIND, NULL);

		if (!failed)
		{
			if (u->existed && (t == NULL || t->payload != u->prev.payload))
				pfree(u->prev.payload);
			continue;
		}
		if (t != NULL && (!u->existed || t->payload != u->prev.payload))
			pfree(t->payload);
		if (u->existed)
		{
			/* its heap node, of the same generation, is valid again */
			t = hash_search(r->timers, &u->key, HASH_ENTER, NULL);
			*t = u->prev;
		}
		else
			(void) hash_search(r->timers, &u->key, HASH_REMOVE, NULL);
	}
	r->undo = NIL;
}

static void
dt_rehearsal_set_timer(const DtEvent *ev, const char *name, const Interval *after,
					   Jsonb *payload, const Interval *every)
{
	DtRehearsal *r = current;
	DtRehearsalTimerKey key;
	DtRehearsalTimer *t;
	TimestampTz due_at;
	bool		found;
	MemoryContext old;

	if (dt_timestamp_plus_interval(ev->event_time, after, &due_at) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timer due time out of range")));
	dt_rehearsal_timer_key(&key, ev->twin_id, name);
	dt_rehearsal_save_undo(r, &key);
	/* the former payload stays: the undo may need it */
	t = hash_search(r->timers, &key, HASH_ENTER, &found);
	t->has_every = (every != NULL);
	if (every != NULL)
		t->every = *every;
	/* in the sandbox's memory: the candidate's goes when its call ends */
	old = MemoryContextSwitchTo(r->cxt);
	t->payload = payload != NULL ?
		DatumGetJsonbP(datumCopy(JsonbPGetDatum(payload), false, -1)) :
		DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	MemoryContextSwitchTo(old);
	t->fire_id = ev->id;
	dt_rehearsal_arm(r, t, due_at);
}

static bool
dt_rehearsal_cancel_timer(const DtEvent *ev, const char *name)
{
	DtRehearsalTimerKey key;
	bool		found;

	dt_rehearsal_timer_key(&key, ev->twin_id, name);
	dt_rehearsal_save_undo(current, &key);
	(void) hash_search(current->timers, &key, HASH_REMOVE, &found);
	return found;
}

static const DtTimerHooks rehearsal_timer_hooks = {
	dt_rehearsal_set_timer,
	dt_rehearsal_cancel_timer
};

/* Forget the timers of a twin that ended. */
static void
dt_rehearsal_end_timers(DtRehearsal *r, const char *twin_id)
{
	HASH_SEQ_STATUS status;
	DtRehearsalTimer *t;

	hash_seq_init(&status, r->timers);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (strcmp(t->key.twin_id, twin_id) == 0)
			(void) hash_search(r->timers, &t->key, HASH_REMOVE, NULL);
	}
}

/* ----------------------------------------------------------------
 * Applying one event or fire to the sandbox
 * ----------------------------------------------------------------
 */
static void
dt_rehearsal_record(DtRehearsal *r, const DtEvent *ev, int alerts_from, int outbox_from)
{
	Oid			types[6] = {INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID, JSONBOID};
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			i;

	MemoryContext old;

	if (dt_alerts_mark() == alerts_from && dt_outbox_mark() == outbox_from)
		return;
	/* freed with the row */
	old = MemoryContextSwitchTo(r->row_cxt);
	args[0] = Int64GetDatum(r->id);
	args[1] = CStringGetTextDatum(ev->twin_id);
	args[2] = Int64GetDatum(ev->id);
	for (i = alerts_from; i < dt_alerts_mark(); i++)
	{
		const char *severity;
		const char *message;
		Jsonb	   *details;

		dt_alerts_get(i, &severity, &message, &details);
		args[3] = CStringGetTextDatum(severity);
		args[4] = CStringGetTextDatum(message);
		args[5] = details ? JsonbPGetDatum(details) : (Datum) 0;
		nulls[5] = details ? ' ' : 'n';
		if (SPI_execute_with_args("INSERT INTO digitaltwin.rehearsal_alerts "
								  "(rehearsal, twin_id, event_id, severity, message, details) "
								  "VALUES ($1, $2, $3, $4, $5, $6)",
								  6, types, args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "digitaltwin: cannot record a rehearsal's alert");
	}
	for (i = outbox_from; i < dt_outbox_mark(); i++)
	{
		args[3] = JsonbPGetDatum(dt_outbox_get(i));
		if (SPI_execute_with_args("INSERT INTO digitaltwin.rehearsal_outbox "
								  "(rehearsal, twin_id, event_id, payload) VALUES ($1, $2, $3, $4)",
								  4, (Oid[]) {INT8OID, TEXTOID, INT8OID, JSONBOID}, args, NULL,
								  false, 0) != SPI_OK_INSERT)
			elog(ERROR, "digitaltwin: cannot record a rehearsal's message");
	}
	MemoryContextSwitchTo(old);
}

static void
dt_rehearsal_record_failure(DtRehearsal *r, const DtEvent *ev, ErrorData *edata)
{
	Datum		args[5];

	args[0] = Int64GetDatum(r->id);
	args[1] = CStringGetTextDatum(ev->twin_id);
	args[2] = Int64GetDatum(ev->id);
	args[3] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
	args[4] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	if (SPI_execute_with_args("INSERT INTO digitaltwin.rehearsal_dead_letters "
							  "(rehearsal, twin_id, event_id, error, sqlstate) VALUES ($1, $2, $3, $4, $5)",
							  5, (Oid[]) {INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID}, args, NULL,
							  false, 0) != SPI_OK_INSERT)
		elog(ERROR, "digitaltwin: cannot record a rehearsal's failure");
	r->failed++;
}

/*
 * Call the candidate for one event in a subtransaction rolled back after:
 * the new state is copied into the sandbox, the staged alerts and messages
 * into the rehearsal's tables.
 */
static void
dt_rehearsal_apply(DtRehearsal *r, DtEvent *ev)
{
	DtModel    *m = &r->candidate;
	DtRehearsalTwin *twin;
	DtCurrentEvent call;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		found;
	int			alerts_from = dt_alerts_mark();
	int			outbox_from = dt_outbox_mark();
	volatile bool failed = false;
	volatile bool ended = false;
	volatile Datum result = (Datum) 0;
	ErrorData  *edata = NULL;

	twin = hash_search(r->twins, ev->twin_id, HASH_ENTER, &found);
	if (!found)
	{
		twin->has_state = false;
		twin->event_count = 0;
	}

	r->undo = NIL;
	/* messages to twins are not rehearsed: staged per call, dropped with it */
	dt_messages_begin(r->call_cxt);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(r->call_cxt);
	call.model = m;
	call.event = ev;
	dt_current_event = &call;
	PG_TRY();
	{
		Datum		args[3];
		bool		nulls[3] = {false, false, false};
		Datum		state = twin->state;
		bool		state_null = !twin->has_state;
		bool		isnull;
		Datum		value;

		args[0] = CStringGetTextDatum(ev->twin_id);
		if (state_null && OidIsValid(m->init))
		{
			state = dt_model_call(m, true, 1, args, nulls, &state_null);
			if (state_null)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("init function %s returned no state for twin \"%s\"",
								format_procedure(m->init), ev->twin_id)));
		}
		args[1] = state;
		nulls[1] = state_null;
		args[2] = JsonbPGetDatum(ev->payload);
		value = dt_model_call(m, false, 3, args, nulls, &isnull);
		if (!isnull)
		{
			dt_check_state(m, value);
			/* out of the subtransaction's memory before it goes */
			MemoryContextSwitchTo(r->cxt);
			if (m->typbyval)
				result = value;
			else if (m->typlen == -1)
				result = PointerGetDatum(PG_DETOAST_DATUM_COPY(value));
			else
				result = datumCopy(value, false, m->typlen);
		}
		ended = isnull;
		dt_current_event = NULL;
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		dt_current_event = NULL;
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		failed = true;
	}
	PG_END_TRY();
	/* what the candidate wrote itself goes; what it staged was copied */
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (!failed)
		dt_rehearsal_record(r, ev, alerts_from, outbox_from);
	dt_alerts_undo_to(alerts_from);
	dt_outbox_undo_to(outbox_from);
	dt_rehearsal_end_undo(r, failed);
	MemoryContextReset(r->call_cxt);

	if (failed)
	{
		dt_rehearsal_record_failure(r, ev, edata);
		FreeErrorData(edata);
		return;
	}
	/* the sandbox keeps one state per twin: the former one goes */
	if (twin->has_state && !m->typbyval)
		pfree(DatumGetPointer(twin->state));
	if (ended)
	{
		twin->has_state = false;
		twin->event_count = 0;
		dt_rehearsal_end_timers(r, ev->twin_id);
	}
	else
	{
		twin->has_state = true;
		twin->state = result;
		twin->event_count++;
	}
}

/* Fire, in due order, every timer of the sandbox due at or before 'until'. */
static void
dt_rehearsal_fire_until(DtRehearsal *r, const char *model, TimestampTz until)
{
	while (!pairingheap_is_empty(r->due))
	{
		DtRehearsalDue *d = pairingheap_container(DtRehearsalDue, node,
												  pairingheap_first(r->due));
		DtRehearsalTimerKey key;
		uint64		generation;
		DtRehearsalTimer *t;
		DtEvent		ev;
		Jsonb	   *fired_payload = NULL;

		CHECK_FOR_INTERRUPTS();
		if (d->due_at > until)
			break;
		(void) pairingheap_remove_first(r->due);
		key = d->key;
		generation = d->generation;
		pfree(d);
		t = hash_search(r->timers, &key, HASH_FIND, NULL);
		if (t == NULL || t->generation != generation)
			continue;			/* cancelled or re-armed since */
		memset(&ev, 0, sizeof(ev));
		ev.id = t->fire_id;
		ev.model = (char *) model;
		/* the key's strings: the timer may go, the fire keeps a copy */
		ev.twin_id = MemoryContextStrdup(r->row_cxt, t->key.twin_id);
		ev.timer = MemoryContextStrdup(r->row_cxt, t->key.name);
		ev.payload = t->payload;
		ev.enqueued_at = ev.event_time = ev.timer_due = t->due_at;

		/*
		 * A recurring timer is re-armed before the fire, which may change
		 * it; one that missed periods fires once and resumes at its next
		 * period after 'until', as in a worker (timers.c).
		 */
		if (t->has_every)
		{
			TimestampTz next = t->due_at;
			bool		ok = true;

			if (t->every.month == 0 && t->every.day == 0 && t->every.time > 0)
			{
				int64		periods = until >= next ? (until - next) / t->every.time + 1 : 1;

				next += periods * t->every.time;
			}
			else
			{
				do
				{
					CHECK_FOR_INTERRUPTS();
					ok = dt_timestamp_plus_interval(next, &t->every, &next) == 0;
				} while (ok && next <= until);
			}
			if (ok)
				dt_rehearsal_arm(r, t, next);
			else
				(void) hash_search(r->timers, &key, HASH_REMOVE, NULL);
		}
		else
		{
			(void) hash_search(r->timers, &key, HASH_REMOVE, NULL);
			/* the fire's, freed after it (the timer is gone) */
			fired_payload = ev.payload;
		}
		dt_rehearsal_apply(r, &ev);
		if (fired_payload != NULL)
			pfree(fired_payload);
		r->fired++;
	}
}

/* ----------------------------------------------------------------
 * rehearse()
 * ----------------------------------------------------------------
 */
static void
dt_rehearsal_candidate(DtRehearsal *r, const char *name, int32 model_id, Oid owner,
					   const char *search_path, Oid process, Oid init)
{
	DtModel    *m = &r->candidate;
	bool		strict;

	memset(m, 0, sizeof(*m));
	strlcpy(m->name, name, NAMEDATALEN);
	m->id = model_id;
	m->process = process;
	m->init = init;
	m->state_type = dt_check_process(process, &strict);
	if (OidIsValid(init))
		dt_check_init(init, m->state_type);
	else if (strict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("process function %s of a model without init must not be STRICT",
						format_procedure(process))));
	m->owner = owner;
	m->search_path = MemoryContextStrdup(r->cxt, search_path);
	dt_model_resolve(m, r->cxt);
	dt_to_jsonb_fmgr(&r->to_jsonb, m->state_type, r->cxt);
}

/*
 * The twins as of 'since', from the model's history: the sandbox starts
 * where the live model was.  jsonb states are taken as they are, composite
 * ones through jsonb_populate_record().
 */
static void
dt_rehearsal_start_from_history(DtRehearsal *r, TimestampTz since)
{
	DtModel    *m = &r->candidate;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	uint64		i;

	/*
	 * jsonb only: turning the history's jsonb into another type would run
	 * that type's functions (a domain's CHECK) here, with the rights of the
	 * extension's tables.
	 */
	if (!m->is_jsonb)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a rehearsal can start from the history only with a jsonb state"),
				 errhint("Rehearse from an empty sandbox: since => NULL.")));
	args[0] = CStringGetTextDatum(m->name);
	args[1] = TimestampTzGetDatum(since);
	if (SPI_execute_with_args("SELECT twin_id, state, event_count FROM digitaltwin.twins_as_of($2) "
							  "WHERE model OPERATOR(pg_catalog.=) $1",
							  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "digitaltwin: cannot read the history");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *twin_id = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																SPI_tuptable->tupdesc, 1, &isnull));
		Datum		state = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		DtRehearsalTwin *twin = hash_search(r->twins, twin_id, HASH_ENTER, NULL);
		MemoryContext old = MemoryContextSwitchTo(r->cxt);

		twin->has_state = !isnull;
		twin->state = isnull ? (Datum) 0 : datumCopy(state, m->typbyval, m->typlen);
		twin->event_count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 3, &isnull));
		MemoryContextSwitchTo(old);
	}
}

/* The logged events, in event order, through the sandbox. */
static void
dt_rehearsal_run(DtRehearsal *r, Datum since, bool no_since, Datum until, bool no_until)
{
	Oid			types[3] = {INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[3];
	char		nulls[3] = {' ', no_since ? 'n' : ' ', no_until ? 'n' : ' '};
	Portal		portal;
	TimestampTz last = DT_NOBEGIN;

	args[0] = Int32GetDatum(r->candidate.id);
	args[1] = since;
	args[2] = until;
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT event_id, twin_id, payload, event_time, enqueued_at, "
									   "       sender_model, sender_twin, retry_of "
									   "FROM digitaltwin.event_log "
									   "WHERE model_id OPERATOR(pg_catalog.=) $1 "
									   "  AND kind OPERATOR(pg_catalog.<>) 'timer' "
									   "  AND ($2 IS NULL OR logged_at OPERATOR(pg_catalog.>=) $2) "
									   "  AND ($3 IS NULL OR logged_at OPERATOR(pg_catalog.<) $3) "
									   "ORDER BY event_time, event_id",
									   3, types, args, nulls, true, 0);
	for (;;)
	{
		uint64		i;
		SPITupleTable *tuptable;
		uint64		n;

		SPI_cursor_fetch(portal, true, 1000);
		tuptable = SPI_tuptable;
		n = SPI_processed;
		if (n == 0)
			break;
		for (i = 0; i < n; i++)
		{
			HeapTuple	tup = tuptable->vals[i];
			TupleDesc	desc = tuptable->tupdesc;
			bool		isnull;
			Datum		d;
			DtEvent		ev;
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			/* the timers due before it fire first */
			dt_rehearsal_fire_until(r, r->candidate.name,
									DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull)));
			old = MemoryContextSwitchTo(r->row_cxt);
			memset(&ev, 0, sizeof(ev));
			ev.id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			ev.model = r->candidate.name;
			ev.twin_id = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
			d = SPI_getbinval(tup, desc, 3, &isnull);
			ev.payload = isnull ? NULL : DatumGetJsonbPCopy(d);
			ev.event_time = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
			ev.enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
			d = SPI_getbinval(tup, desc, 6, &isnull);
			ev.sender_model = isnull ? NULL : TextDatumGetCString(d);
			d = SPI_getbinval(tup, desc, 7, &isnull);
			ev.sender_twin = isnull ? NULL : TextDatumGetCString(d);
			d = SPI_getbinval(tup, desc, 8, &isnull);
			ev.retry_of = isnull ? 0 : DatumGetInt64(d);
			MemoryContextSwitchTo(old);
			dt_rehearsal_apply(r, &ev);
			r->events++;
			last = ev.event_time;
			MemoryContextReset(r->row_cxt);
		}
		SPI_freetuptable(tuptable);
	}
	SPI_cursor_close(portal);
	/* the timers due up to the last event's time */
	dt_rehearsal_fire_until(r, r->candidate.name, last);
}

/* The sandbox's twins, as jsonb, into rehearsal_twins. */
static void
dt_rehearsal_save_twins(DtRehearsal *r)
{
	HASH_SEQ_STATUS status;
	DtRehearsalTwin *twin;
	Oid			types[4] = {INT8OID, TEXTOID, JSONBOID, INT8OID};
	Datum		args[4];

	args[0] = Int64GetDatum(r->id);
	hash_seq_init(&status, r->twins);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		Oid			save_userid;
		int			save_sec_context;
		int			guc_level;

		if (!twin->has_state)
			continue;
		args[1] = CStringGetTextDatum(twin->twin_id);
		if (r->candidate.is_jsonb)
			args[2] = twin->state;
		else
		{
			/* the output functions of the state's type, as its owner */
			guc_level = dt_become_model_owner(r->candidate.owner, r->candidate.search_path,
											  &save_userid, &save_sec_context);
			args[2] = FunctionCall1(&r->to_jsonb, twin->state);
			dt_leave_model_owner(save_userid, save_sec_context, guc_level);
		}
		args[3] = Int64GetDatum(twin->event_count);
		if (SPI_execute_with_args("INSERT INTO digitaltwin.rehearsal_twins "
								  "(rehearsal, twin_id, state, event_count) VALUES ($1, $2, $3, $4)",
								  4, types, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "digitaltwin: cannot record a rehearsal's twin");
	}
}

Datum
digitaltwin_rehearse(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			caller = GetUserId();
	Oid			process;
	Oid			init;
	DtRehearsal r;
	HASHCTL		ctl;
	int32		model_id;
	Oid			owner;
	char	   *search_path;
	bool		history;
	bool		isnull;
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[8] = {INT4OID, TEXTOID, REGPROCEDUREOID, REGPROCEDUREOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, REGROLEOID};
	DtTrustedScope scope;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.rehearse()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model name must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("candidate process function must not be null")));
	if (current != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a rehearsal is already running in this session")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	process = PG_GETARG_OID(1);
	init = PG_ARGISNULL(2) ? InvalidOid : PG_GETARG_OID(2);

	memset(&r, 0, sizeof(r));
	r.cxt = AllocSetContextCreate(CurrentMemoryContext, "digitaltwin rehearsal",
								  ALLOCSET_DEFAULT_SIZES);
	r.call_cxt = AllocSetContextCreate(r.cxt, "digitaltwin rehearsal call",
									   ALLOCSET_DEFAULT_SIZES);
	r.row_cxt = AllocSetContextCreate(r.cxt, "digitaltwin rehearsal row",
									  ALLOCSET_DEFAULT_SIZES);

	dt_trusted_enter(&scope);
	dt_model_read_row(name, "id, owner::pg_catalog.oid, search_path, history_keep IS NOT NULL");
	model_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	/* out of SPI's memory, which goes with the scope */
	search_path = MemoryContextStrdup(r.cxt,
									  TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																		SPI_tuptable->tupdesc, 3, &isnull)));
	history = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	/* the candidate runs as the model's owner: the owner's decision (as alter_model) */
	if (!has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the owner of model \"%s\" may rehearse a version of it", name),
				 errdetail("A candidate runs as the model's owner.")));
	if (!dt_allow_superuser_models && superuser_arg(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("model \"%s\" is owned by a superuser", name)));
	/* the signatures and the caller's right, as the caller */
	dt_trusted_leave(&scope);
	dt_rehearsal_candidate(&r, name, model_id, owner, search_path, process, init);
	dt_trusted_enter(&scope);
	if (pg_proc_aclcheck(process, owner, ACL_EXECUTE) != ACLCHECK_OK ||
		(OidIsValid(init) && pg_proc_aclcheck(init, owner, ACL_EXECUTE) != ACLCHECK_OK))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the owner of model \"%s\" may not execute the candidate's functions", name)));

	args[0] = Int32GetDatum(model_id);
	args[1] = CStringGetTextDatum(name);
	args[2] = ObjectIdGetDatum(process);
	args[3] = ObjectIdGetDatum(init);
	nulls[3] = OidIsValid(init) ? ' ' : 'n';
	args[4] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	args[5] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
	nulls[5] = PG_ARGISNULL(4) ? 'n' : ' ';
	args[6] = BoolGetDatum(history && !PG_ARGISNULL(3));
	args[7] = ObjectIdGetDatum(caller);
	if (SPI_execute_with_args("INSERT INTO digitaltwin.rehearsals "
							  "(model_id, model, candidate_process, candidate_init, since, until, "
							  " from_history, created_by) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
							  8, types, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "digitaltwin: cannot record the rehearsal");
	r.id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	ctl.keysize = DT_TWIN_ID_MAXLEN + 1;
	ctl.entrysize = sizeof(DtRehearsalTwin);
	ctl.hcxt = r.cxt;
	r.twins = hash_create("digitaltwin rehearsal twins", 1024, &ctl,
						  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ctl.keysize = sizeof(DtRehearsalTimerKey);
	ctl.entrysize = sizeof(DtRehearsalTimer);
	r.timers = hash_create("digitaltwin rehearsal timers", 1024, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	r.due = pairingheap_allocate(dt_rehearsal_due_cmp, NULL);

	if (history && !PG_ARGISNULL(3))
		dt_rehearsal_start_from_history(&r, PG_GETARG_TIMESTAMPTZ(3));

	/* the staging of a batch, in the sandbox's memory */
	dt_alerts_begin(r.cxt);
	dt_outbox_begin(r.cxt);
	dt_messages_begin(r.cxt);
	current = &r;
	dt_timer_hooks = &rehearsal_timer_hooks;
	PG_TRY();
	{
		dt_rehearsal_run(&r, args[4], nulls[4] == 'n', args[5], nulls[5] == 'n');
	}
	PG_FINALLY();
	{
		current = NULL;
		dt_timer_hooks = NULL;
	}
	PG_END_TRY();
	dt_rehearsal_save_twins(&r);

	if (SPI_execute_with_args("UPDATE digitaltwin.rehearsals SET events = $2, timers_fired = $3, failed = $4 "
							  "WHERE id OPERATOR(pg_catalog.=) $1",
							  4, (Oid[]) {INT8OID, INT8OID, INT8OID, INT8OID},
							  (Datum[]) {Int64GetDatum(r.id), Int64GetDatum(r.events),
								  Int64GetDatum(r.fired), Int64GetDatum(r.failed)},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "digitaltwin: cannot record the rehearsal");
	dt_trusted_leave(&scope);
	MemoryContextDelete(r.cxt);
	PG_RETURN_INT64(r.id);
}
