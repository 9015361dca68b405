/*-------------------------------------------------------------------------
 *
 * timers.c
 *	  Durable timers of twins: set_timer(), cancel_timer(), and firing them
 *	  through the worker's batches.
 *
 * A timer belongs to a twin, hence to the worker whose partition holds the
 * twin: only that worker ever arms, cancels, fires or deletes it.  So the
 * worker keeps, in local memory, an index of its partition's pending
 * timers (a hash by model, twin and name, and a pairing heap by due time,
 * whose top is the worker's wait timeout), and nothing in shared memory.
 * digitaltwin.timer_state holds the same timers durably; the index is
 * rebuilt from it whenever the worker rebuilds its twins (start, crash,
 * promotion, a failed batch).
 *
 * Within a batch, set_timer() and cancel_timer() only record what the
 * event did to the timer (an "op", in batch memory, with an undo log
 * shared in spirit with stage.c's: a failed event's ops are undone with
 * its run).  Before commit the ops are written to timer_state in the
 * batch's transaction; after commit they are applied to the index.  A
 * timer is therefore armed or cancelled exactly when the event that did it
 * is consumed, and a rolled-back or dead-lettered event arms nothing.
 *
 * Firing.  At the start of a batch the worker takes the due timers from
 * the heap and claims their rows: it deletes them from timer_state in the
 * batch's transaction, and each becomes an event of the batch (kind
 * 'timer', the id taken from the events' sequence when it was armed, the
 * timer's payload),
 * ordered among the queue's events by due time.  The row's deletion, the
 * model's effects and the re-arming of a recurring timer commit together:
 * a timer fires exactly once per due time, and a crash before the commit
 * leaves the row to fire after the restart.  An event of the batch that
 * came before the fire and re-armed or cancelled the timer (or ended its
 * twin) wins: the fire is dropped, as it would have been had the event
 * come a moment earlier.  A fire whose model fails is dead-lettered, and
 * the timer is consumed all the same.
 *
 * A recurring timer that missed several periods (the server was down)
 * fires once and resumes at its next period after now: no burst.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/ilist.h"
#include "lib/pairingheap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_set_timer_sql);
PG_FUNCTION_INFO_V1(digitaltwin_cancel_timer_sql);

/* Attribute numbers of digitaltwin.timer_state */
#define DT_TIMER_ATT_MODEL_ID	1
#define DT_TIMER_ATT_TWIN_ID	2
#define DT_TIMER_ATT_NAME		3
#define DT_TIMER_ATT_DUE_AT		4
#define DT_TIMER_ATT_EVERY		5
#define DT_TIMER_ATT_PAYLOAD	6
#define DT_TIMER_ATT_FIRE_ID	7
#define DT_TIMER_ATT_DEPTH		8

/*
 * A timer's name: model, twin and timer name.  The strings are compared,
 * not the pointers; a key used for a lookup may point anywhere, a key
 * stored in a hash points to a copy owned by the hash's context.
 */
typedef struct DtTimerKey
{
	int32		model_id;
	const char *twin_id;
	const char *name;			/* NULL in the per-twin hash */
} DtTimerKey;

/* A committed pending timer of the partition (the index). */
typedef struct DtTimer
{
	DtTimerKey	key;			/* hash key: must be first */
	TimestampTz due_at;
	pairingheap_node heap_node;
	bool		in_heap;		/* false while claimed by a batch */
	bool		parked;			/* due, out of the heap: its model is paused */
	dlist_node	twin_node;		/* in its twin's list */
} DtTimer;

/* The committed timers of one twin (to end them with the twin). */
typedef struct DtTwinTimers
{
	DtTimerKey	key;			/* hash key: must be first */
	dlist_head	timers;
} DtTwinTimers;

typedef enum DtTimerOpState
{
	DT_OP_UNCHANGED,			/* as committed */
	DT_OP_ARMED,				/* armed (or re-armed) by this batch */
	DT_OP_GONE,					/* cancelled, fired once, or its twin ended */
	DT_OP_FIRING				/* claimed, its fire not processed yet */
} DtTimerOpState;

/* What this batch did to one timer. */
typedef struct DtTimerOp
{
	DtTimerKey	key;			/* hash key: must be first */
	DtTimerOpState state;
	TimestampTz due_at;
	bool		has_every;
	Interval	every;
	Jsonb	   *payload;
	int64		fire_id;		/* id of its fire (see dt_timers_persist) */
	int32		depth;			/* of the event that armed it (see set_timer) */
	bool		committed;		/* in the index when the batch started */
	bool		claimed;		/* its row was deleted by this batch's claim */
	dlist_node	twin_node;		/* in the batch's list of its twin's ops */
} DtTimerOp;

typedef struct DtTwinOps
{
	DtTimerKey	key;			/* hash key: must be first */
	dlist_head	ops;
} DtTwinOps;

typedef struct DtTimerUndo
{
	DtTimerOp  *op;
	DtTimerOpState state;
	TimestampTz due_at;
	bool		has_every;
	Interval	every;
	Jsonb	   *payload;
	int32		depth;
} DtTimerUndo;

/* the index, in index_cxt */
static MemoryContext index_cxt = NULL;
static HTAB *index_timers = NULL;
static HTAB *index_twins = NULL;
static pairingheap *index_heap = NULL;
static bool index_valid = false;

/* set while a rehearsal runs (rehearsal.c) */
const DtTimerHooks *dt_timer_hooks = NULL;
static int64 nparked = 0;		/* timers parked (dt_timers_claim) */
static bool table_exists = false;	/* timer_state: since version 1.6 */

/* the batch's ops, in batch_cxt */
static MemoryContext batch_cxt = NULL;
static HTAB *ops = NULL;
static HTAB *twin_ops = NULL;
static DtTimerUndo *undo = NULL;
static int	nundo = 0;
static int	undo_size = 0;
static bool claimed_any = false;

static SPIPlanPtr upsert_plan = NULL;

/* ----------------------------------------------------------------
 * Keys
 * ----------------------------------------------------------------
 */
static uint32
dt_timer_key_hash(const void *key, Size keysize)
{
	const DtTimerKey *k = key;
	uint32		h = hash_bytes_uint32((uint32) k->model_id);

	h = hash_combine(h, hash_bytes((const unsigned char *) k->twin_id, strlen(k->twin_id)));
	if (k->name != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) k->name, strlen(k->name)));
	return h;
}

static int
dt_timer_key_match(const void *key1, const void *key2, Size keysize)
{
	const DtTimerKey *a = key1;
	const DtTimerKey *b = key2;

	if (a->model_id != b->model_id || strcmp(a->twin_id, b->twin_id) != 0)
		return 1;
	if (a->name == NULL || b->name == NULL)
		return (a->name == b->name) ? 0 : 1;
	return strcmp(a->name, b->name);
}

static HTAB *
dt_timer_hash_create(const char *name, Size entrysize, MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(DtTimerKey);
	ctl.entrysize = entrysize;
	ctl.hash = dt_timer_key_hash;
	ctl.match = dt_timer_key_match;
	ctl.hcxt = cxt;
	return hash_create(name, 256, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* After HASH_ENTER of a new entry: make its key own its strings. */
static void
dt_timer_key_own(DtTimerKey *key, MemoryContext cxt)
{
	key->twin_id = MemoryContextStrdup(cxt, key->twin_id);
	if (key->name != NULL)
		key->name = MemoryContextStrdup(cxt, key->name);
}

/* min-heap on due time */
static int
dt_timer_heap_compare(const pairingheap_node *a, const pairingheap_node *b, void *arg)
{
	const DtTimer *ta = pairingheap_const_container(DtTimer, heap_node, a);
	const DtTimer *tb = pairingheap_const_container(DtTimer, heap_node, b);

	if (ta->due_at < tb->due_at)
		return 1;
	if (ta->due_at > tb->due_at)
		return -1;
	return 0;
}

/* ----------------------------------------------------------------
 * The index of committed timers
 * ----------------------------------------------------------------
 */
static void
dt_index_reset(void)
{
	if (index_cxt == NULL)
		index_cxt = AllocSetContextCreate(TopMemoryContext, "digitaltwin timers",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(index_cxt);
	index_timers = dt_timer_hash_create("digitaltwin timers", sizeof(DtTimer), index_cxt);
	index_twins = dt_timer_hash_create("digitaltwin timers per twin",
									   sizeof(DtTwinTimers), index_cxt);
	index_heap = MemoryContextAlloc(index_cxt, sizeof(pairingheap));
	index_heap->ph_compare = dt_timer_heap_compare;
	index_heap->ph_arg = NULL;
	index_heap->ph_root = NULL;
	nparked = 0;
}

static void
dt_index_set(const DtTimerKey *key, TimestampTz due_at)
{
	DtTimer    *t;
	bool		found;

	t = hash_search(index_timers, key, HASH_ENTER, &found);
	if (!found)
	{
		DtTwinTimers *tw;
		DtTimerKey	twin_key = {key->model_id, key->twin_id, NULL};
		bool		twin_found;

		dt_timer_key_own(&t->key, index_cxt);
		t->in_heap = false;
		t->parked = false;
		tw = hash_search(index_twins, &twin_key, HASH_ENTER, &twin_found);
		if (!twin_found)
		{
			dt_timer_key_own(&tw->key, index_cxt);
			dlist_init(&tw->timers);
		}
		dlist_push_tail(&tw->timers, &t->twin_node);
	}
	else if (t->in_heap)
		pairingheap_remove(index_heap, &t->heap_node);
	if (t->parked)
	{
		t->parked = false;
		nparked--;
	}
	t->due_at = due_at;
	pairingheap_add(index_heap, &t->heap_node);
	t->in_heap = true;
}

/* Forget a timer; 'key' may be the entry's own key. */
static void
dt_index_remove(const DtTimerKey *key)
{
	DtTimer    *t = hash_search(index_timers, key, HASH_FIND, NULL);
	DtTimerKey	twin_key;
	DtTwinTimers *tw;
	char	   *twin_id;
	char	   *name;

	if (t == NULL)
		return;
	if (t->in_heap)
		pairingheap_remove(index_heap, &t->heap_node);
	if (t->parked)
		nparked--;
	dlist_delete(&t->twin_node);
	twin_id = (char *) t->key.twin_id;
	name = (char *) t->key.name;
	twin_key.model_id = t->key.model_id;
	twin_key.twin_id = twin_id;
	twin_key.name = NULL;
	tw = hash_search(index_twins, &twin_key, HASH_FIND, NULL);
	if (tw != NULL && dlist_is_empty(&tw->timers))
	{
		char	   *twin_copy = (char *) tw->key.twin_id;

		(void) hash_search(index_twins, &twin_key, HASH_REMOVE, NULL);
		pfree(twin_copy);
	}
	twin_key.name = name;
	(void) hash_search(index_timers, &twin_key, HASH_REMOVE, NULL);
	pfree(twin_id);
	pfree(name);
}

/* one row of the load; strings in a context reset with each row */
static void
dt_index_load_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	MemoryContext tmp = arg;
	MemoryContext old = MemoryContextSwitchTo(tmp);
	bool		isnull;
	DtTimerKey	key;

	key.model_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	key.twin_id = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	key.name = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
	dt_index_set(&key, DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull)));
	MemoryContextSwitchTo(old);
	MemoryContextReset(tmp);
}

/*
 * Load the partition's pending timers from timer_state.  Inside the
 * worker's transaction, SPI connected.
 */
void
dt_timers_load(int partition, int partitions)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		args[2];
	MemoryContext tmp;

	dt_index_reset();
	/* an older version of the extension, not updated yet: no timers */
	table_exists = dt_table_exists("timer_state");
	if (!table_exists)
	{
		index_valid = true;
		return;
	}
	args[0] = Int32GetDatum(partitions);
	args[1] = Int32GetDatum(partition);
	tmp = AllocSetContextCreate(CurrentMemoryContext, "digitaltwin timer load",
								ALLOCSET_DEFAULT_SIZES);
	dt_spi_cursor_each(SPI_cursor_open_with_args(NULL,
												 "SELECT model_id, twin_id, name, due_at "
												 "FROM digitaltwin.timer_state "
												 "WHERE digitaltwin.partition_of(twin_id, $1) OPERATOR(pg_catalog.=) $2",
												 2, types, args, NULL, true, 0),
					   dt_index_load_row, tmp);
	MemoryContextDelete(tmp);
	index_valid = true;
}

/* false when the index must be loaded (again) before the next batch */
bool
dt_timers_loaded(void)
{
	/* ALTER EXTENSION ... UPDATE brought the table */
	if (index_valid && !table_exists && dt_table_exists("timer_state"))
		index_valid = false;
	return index_valid;
}

/* Forget the index: it is loaded again before the next batch. */
void
dt_timers_invalidate(void)
{
	index_valid = false;
}

/* The earliest due time of the partition's timers, or DT_NOEND. */
TimestampTz
dt_timers_next_due(void)
{
	if (!index_valid || pairingheap_is_empty(index_heap))
		return DT_NOEND;
	return pairingheap_container(DtTimer, heap_node,
								 pairingheap_first(index_heap))->due_at;
}

int64
dt_timers_pending(void)
{
	return index_valid ? hash_get_num_entries(index_timers) : 0;
}

/* Forget the timers of dropped models (their rows went with the model). */
void
dt_timers_purge_models(bool (*is_live) (int32 model_id))
{
	HASH_SEQ_STATUS status;
	DtTimer    *t;
	List	   *gone = NIL;
	ListCell   *lc;

	if (!index_valid)
		return;
	hash_seq_init(&status, index_timers);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (!is_live(t->key.model_id))
			gone = lappend(gone, &t->key);
	}
	foreach(lc, gone)
	{
		DtTimerKey	key = *(DtTimerKey *) lfirst(lc);

		dt_index_remove(&key);
	}
	list_free(gone);
}

/* ----------------------------------------------------------------
 * The batch's ops and their undo log
 * ----------------------------------------------------------------
 */
void
dt_timers_begin(MemoryContext cxt)
{
	batch_cxt = cxt;
	ops = NULL;
	twin_ops = NULL;
	undo_size = 0;
	nundo = 0;
	undo = NULL;
	claimed_any = false;
}

static DtTimerOp *
dt_timer_op(const DtTimerKey *key, bool create)
{
	DtTimerOp  *op;
	bool		found;

	if (ops == NULL)
	{
		if (!create)
			return NULL;
		ops = dt_timer_hash_create("digitaltwin timer ops", sizeof(DtTimerOp), batch_cxt);
		twin_ops = dt_timer_hash_create("digitaltwin timer ops per twin",
										sizeof(DtTwinOps), batch_cxt);
	}
	op = hash_search(ops, key, create ? HASH_ENTER : HASH_FIND, &found);
	if (op != NULL && !found)
	{
		DtTimerKey	twin_key = {key->model_id, key->twin_id, NULL};
		DtTwinOps  *tw;
		bool		twin_found;

		dt_timer_key_own(&op->key, batch_cxt);
		op->state = DT_OP_UNCHANGED;
		op->due_at = 0;
		op->has_every = false;
		op->payload = NULL;
		op->depth = 0;
		op->committed = index_valid &&
			hash_search(index_timers, key, HASH_FIND, NULL) != NULL;
		op->claimed = false;
		tw = hash_search(twin_ops, &twin_key, HASH_ENTER, &twin_found);
		if (!twin_found)
		{
			tw->key.twin_id = op->key.twin_id;
			dlist_init(&tw->ops);
		}
		dlist_push_tail(&tw->ops, &op->twin_node);
	}
	return op;
}

/* whether the timer exists, as far as this batch has got */
static bool
dt_timer_op_exists(const DtTimerOp *op)
{
	switch (op->state)
	{
		case DT_OP_UNCHANGED:
			return op->committed && !op->claimed;
		case DT_OP_ARMED:
		case DT_OP_FIRING:
			return true;
		case DT_OP_GONE:
			return false;
	}
	return false;
}

static void
dt_timer_save_undo(DtTimerOp *op)
{
	DtTimerUndo *u;

	if (nundo == undo_size)
	{
		undo_size = Max(undo_size * 2, 64);
		undo = undo == NULL ?
			MemoryContextAlloc(batch_cxt, sizeof(DtTimerUndo) * undo_size) :
			repalloc(undo, sizeof(DtTimerUndo) * undo_size);
	}
	u = &undo[nundo++];
	u->op = op;
	u->state = op->state;
	u->due_at = op->due_at;
	u->has_every = op->has_every;
	u->every = op->every;
	u->payload = op->payload;
	u->depth = op->depth;
}

int
dt_timers_undo_mark(void)
{
	return nundo;
}

void
dt_timers_undo_to(int mark)
{
	while (nundo > mark)
	{
		DtTimerUndo *u = &undo[--nundo];

		u->op->state = u->state;
		u->op->due_at = u->due_at;
		u->op->has_every = u->has_every;
		u->op->every = u->every;
		u->op->payload = u->payload;
		u->op->depth = u->depth;
	}
}

/* ----------------------------------------------------------------
 * set_timer() and cancel_timer()
 * ----------------------------------------------------------------
 */
/* the current event, for set_timer() and cancel_timer() */
static const DtEvent *
dt_timer_require_event(const char *what)
{
	return dt_require_model_call(what,
								 "A timer belongs to the twin whose event a digitaltwin worker is processing.",
								 NULL)->event;
}

static void
dt_timer_check_name(const char *name)
{
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timer name must not be null")));
	if (*name == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timer name must not be empty")));
	if (strlen(name) > DT_TIMER_NAME_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("timer name must be at most %d bytes", DT_TIMER_NAME_MAXLEN),
				 errdetail("The name has %zu bytes.", strlen(name))));
}

/* <0, 0 or >0 as the interval is negative, zero or positive */
static int
dt_interval_sign(const Interval *iv)
{
	Interval	zero;

	memset(&zero, 0, sizeof(zero));
	return DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(iv),
											 IntervalPGetDatum(&zero)));
}

void
digitaltwin_set_timer(const char *name, const Interval *after,
					  Jsonb *payload, const Interval *every)
{
	const DtEvent *ev = dt_timer_require_event("digitaltwin.set_timer()");
	DtTimerKey	key;
	DtTimerOp  *op;
	TimestampTz due_at;
	TimestampTz next;
	MemoryContext old;

	dt_timer_check_name(name);
	if (!table_exists)
		dt_require_table("timer_state", "1.6", "digitaltwin.set_timer()");
	if (after == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timer delay must not be null")));
	if (dt_interval_sign(after) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timer delay must not be negative")));
	if (every != NULL && dt_interval_sign(every) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the period of a recurring timer must be positive"),
				 errhint("Pass every => NULL for a timer that fires once.")));
	if (payload != NULL && VARSIZE(payload) > (Size) dt_max_payload_kb * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("timer payload is too large"),
				 errdetail("A timer's payload may have digitaltwin.max_payload_size (%d kB).",
						   dt_max_payload_kb)));
	if (dt_timestamp_plus_interval(GetCurrentTimestamp(), after, &due_at) != 0 ||
		(every != NULL && dt_timestamp_plus_interval(due_at, every, &next) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timer due time out of range"),
				 errdetail("A timer must fall due, and a recurring one fire twice, before the end of the range of timestamps.")));

	if (dt_timer_hooks != NULL)
	{
		dt_timer_hooks->set(ev, name, after, payload, every);
		return;
	}
	key.model_id = dt_current_event->model->id;
	key.twin_id = ev->twin_id;
	key.name = name;
	op = dt_timer_op(&key, true);
	dt_timer_save_undo(op);

	old = MemoryContextSwitchTo(batch_cxt);
	op->state = DT_OP_ARMED;
	op->due_at = due_at;
	/*
	 * The fire is as deep in a chain of messages as the event that armed
	 * it: a model answering each message with a timer, and each fire with a
	 * message, must meet digitaltwin.max_message_depth too.
	 */
	op->depth = ev->depth;
	op->has_every = (every != NULL);
	if (every != NULL)
		op->every = *every;
	op->payload = payload != NULL ?
		DatumGetJsonbPCopy(JsonbPGetDatum(payload)) :
		DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	MemoryContextSwitchTo(old);
}

bool
digitaltwin_cancel_timer(const char *name)
{
	const DtEvent *ev = dt_timer_require_event("digitaltwin.cancel_timer()");
	DtTimerKey	key;
	DtTimerOp  *op;

	dt_timer_check_name(name);
	if (dt_timer_hooks != NULL)
		return dt_timer_hooks->cancel(ev, name);
	key.model_id = dt_current_event->model->id;
	key.twin_id = ev->twin_id;
	key.name = name;
	op = dt_timer_op(&key, true);
	if (!dt_timer_op_exists(op))
		return false;
	dt_timer_save_undo(op);
	op->state = DT_OP_GONE;
	return true;
}

const char *
digitaltwin_current_timer(void)
{
	if (dt_current_event == NULL)
		return NULL;
	return dt_current_event->event->timer;
}

Datum
digitaltwin_set_timer_sql(PG_FUNCTION_ARGS)
{
	char	   *name;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timer name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	digitaltwin_set_timer(name,
						  PG_ARGISNULL(1) ? NULL : PG_GETARG_INTERVAL_P(1),
						  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
						  PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3));
	PG_RETURN_VOID();
}

Datum
digitaltwin_cancel_timer_sql(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timer name must not be null")));
	PG_RETURN_BOOL(digitaltwin_cancel_timer(text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

/*
 * The model ended a twin (process returned NULL): its timers end with it,
 * those committed and those this batch armed.
 */
void
dt_timers_twin_ended(int32 model_id, const char *twin_id)
{
	DtTimerKey	twin_key = {model_id, twin_id, NULL};
	DtTwinTimers *committed = NULL;
	DtTwinOps  *staged;
	dlist_iter	iter;

	if (index_valid)
		committed = hash_search(index_twins, &twin_key, HASH_FIND, NULL);
	if (committed != NULL)
	{
		dlist_foreach(iter, &committed->timers)
		{
			DtTimer    *t = dlist_container(DtTimer, twin_node, iter.cur);

			(void) dt_timer_op(&t->key, true);
		}
	}
	if (twin_ops == NULL)
		return;
	staged = hash_search(twin_ops, &twin_key, HASH_FIND, NULL);
	if (staged == NULL)
		return;
	dlist_foreach(iter, &staged->ops)
	{
		DtTimerOp  *op = dlist_container(DtTimerOp, twin_node, iter.cur);

		if (dt_timer_op_exists(op))
		{
			dt_timer_save_undo(op);
			op->state = DT_OP_GONE;
		}
	}
}

/* ----------------------------------------------------------------
 * Firing
 * ----------------------------------------------------------------
 */

/*
 * The length of a positive interval in microseconds, months taken as 30
 * days and days as 24 hours: what interval_cmp() compares, so it is at
 * least 1 for an interval set_timer() accepted as a period.
 */
static int64
dt_interval_usecs(const Interval *iv)
{
	double		us = (double) iv->time + (double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;

	return us < 1 ? 1 : (us > (double) PG_INT64_MAX / 2 ? PG_INT64_MAX / 2 : (int64) us);
}

/*
 * The next due time of a timer that fires now: none for a one-shot timer
 * (or a recurring one whose next period is past the end of time), else its
 * first period after now.  Periods missed (the server was down) are
 * skipped, not fired in a burst.  Calendar arithmetic can step backwards
 * ('1 month -29 days' from the end of January): such a step is replaced by
 * the period's length, so the loop always moves on, and after 1000 periods
 * the rest is skipped at once.  Never fails: it runs after the model.
 */
static void
dt_timer_advance(DtTimerOp *op, TimestampTz now)
{
	TimestampTz next = op->due_at;
	int64		step = op->has_every ? dt_interval_usecs(&op->every) : 0;
	int			periods = 0;

	while (op->has_every && next <= now)
	{
		TimestampTz after;

		if (++periods > 1000)
		{
			double		jump = (double) next + ((double) ((now - next) / step) + 1) * step;

			if (jump > (double) END_TIMESTAMP - USECS_PER_DAY)
				break;
			next = next + ((now - next) / step + 1) * step;
			continue;
		}
		if (dt_timestamp_plus_interval(next, &op->every, &after) != 0)
			break;
		next = (after > next) ? after : next + step;
	}
	if (!op->has_every || next <= now)
	{
		op->state = DT_OP_GONE;
		return;
	}
	op->state = DT_OP_ARMED;
	op->due_at = next;
}

/*
 * A timer event of the batch is about to be applied: false if an earlier
 * event of the batch re-armed or cancelled the timer, or ended its twin
 * (the fire is then dropped).  Otherwise the timer is consumed, within the
 * event's run (undone if the model fails).
 */
bool
dt_timers_fire_begins(const DtEvent *ev)
{
	DtTimerKey	key = {ev->timer_model_id, ev->twin_id, ev->timer};
	DtTimerOp  *op = dt_timer_op(&key, false);

	if (op == NULL || op->state != DT_OP_FIRING || op->due_at != ev->timer_due)
		return false;
	dt_timer_save_undo(op);
	dt_timer_advance(op, GetCurrentTimestamp());
	return true;
}

/* A timer event was dead-lettered: the timer is consumed all the same. */
void
dt_timers_fire_failed(const DtEvent *ev)
{
	DtTimerKey	key = {ev->timer_model_id, ev->twin_id, ev->timer};
	DtTimerOp  *op = dt_timer_op(&key, false);

	if (op != NULL && op->state == DT_OP_FIRING && op->due_at == ev->timer_due)
		dt_timer_advance(op, GetCurrentTimestamp());
}

/* timer_state's rows by primary key (dt_key_scan_open), one timer at a time */
typedef struct DtTimerRows
{
	DtKeyScan	ks;				/* ks.slot: the row found */
	ScanKeyData keys[3];
} DtTimerRows;

static void
dt_timer_rows_open(DtTimerRows *r)
{
	dt_key_scan_open(&r->ks, dt_extension_relid("timer_state"), RowExclusiveLock,
					 GetActiveSnapshot());
}

static bool
dt_timer_rows_find(DtTimerRows *r, const DtTimerKey *key)
{
	ScanKeyInit(&r->keys[0], DT_TIMER_ATT_MODEL_ID, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(key->model_id));
	ScanKeyEntryInitialize(&r->keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   r->ks.index->rd_indcollation[1], F_TEXTEQ,
						   CStringGetTextDatum(key->twin_id));
	ScanKeyEntryInitialize(&r->keys[2], 0, 3, BTEqualStrategyNumber, InvalidOid,
						   r->ks.index->rd_indcollation[2], F_TEXTEQ,
						   CStringGetTextDatum(key->name));
	return dt_key_scan_fetch(&r->ks, r->keys);
}

/*
 * Only this worker writes its timers' rows; one deleted meanwhile (its
 * model dropped) makes the delete an error, and the batch is retried.
 */
static void
dt_timer_rows_delete_found(DtTimerRows *r)
{
	simple_table_tuple_delete(r->ks.rel, &r->ks.slot->tts_tid, GetActiveSnapshot());
}

static void
dt_timer_rows_close(DtTimerRows *r)
{
	dt_key_scan_close(&r->ks);
	CommandCounterIncrement();
}

static int
dt_timer_event_cmp(const void *a, const void *b)
{
	const DtEvent *ea = a;
	const DtEvent *eb = b;

	if (ea->timer_due != eb->timer_due)
		return ea->timer_due < eb->timer_due ? -1 : 1;
	return 0;
}

/* Make the event that fires a claimed timer, and record the claim. */
static void
dt_timer_claimed(DtEvent *ev, DtTimer *t, DtTimerRows *r, DtModel *model)
{
	bool		isnull;
	Datum		d;
	DtTimerOp  *op;

	memset(ev, 0, sizeof(DtEvent));
	ev->relid = InvalidOid;
	ev->model = pstrdup(model->name);
	ev->twin_id = pstrdup(t->key.twin_id);
	ev->timer = pstrdup(t->key.name);
	ev->timer_model_id = t->key.model_id;
	ev->timer_due = DatumGetTimestampTz(slot_getattr(r->ks.slot, DT_TIMER_ATT_DUE_AT, &isnull));
	ev->enqueued_at = ev->timer_due;
	ev->event_time = ev->timer_due;
	ev->payload = DatumGetJsonbPCopy(slot_getattr(r->ks.slot, DT_TIMER_ATT_PAYLOAD, &isnull));
	ev->id = DatumGetInt64(slot_getattr(r->ks.slot, DT_TIMER_ATT_FIRE_ID, &isnull));
	ev->depth = DatumGetInt32(slot_getattr(r->ks.slot, DT_TIMER_ATT_DEPTH, &isnull));

	op = dt_timer_op(&t->key, true);
	op->state = DT_OP_FIRING;
	op->committed = true;
	op->claimed = true;
	op->due_at = ev->timer_due;
	op->payload = ev->payload;
	op->fire_id = ev->id;
	op->depth = ev->depth;
	d = slot_getattr(r->ks.slot, DT_TIMER_ATT_EVERY, &isnull);
	op->has_every = !isnull;
	if (!isnull)
		op->every = *DatumGetIntervalP(d);
}

/*
 * Claim up to 'limit' of the partition's timers due at 'now': delete their
 * rows in the batch's transaction and return one event per timer, in due
 * order, with fresh ids, in *events (batch memory).  The claimed timers
 * leave the heap until the batch is published (or the index is reloaded
 * after a failure).
 */
int
dt_timers_claim(TimestampTz now, int limit, DtEvent **events)
{
	DtTimer   **due;
	DtEvent    *out;
	int			ndue = 0;
	int			n = 0;
	int			i;
	DtTimerRows r;

	*events = NULL;
	if (!index_valid || limit <= 0 || dt_timers_next_due() > now)
		return 0;

	due = palloc(sizeof(DtTimer *) * limit);
	while (ndue < limit && !pairingheap_is_empty(index_heap))
	{
		DtTimer    *t = pairingheap_container(DtTimer, heap_node,
											  pairingheap_first(index_heap));

		DtModel    *model;

		if (t->due_at > now)
			break;
		(void) pairingheap_remove_first(index_heap);
		t->in_heap = false;
		/* a paused model's timers wait, out of the heap, for its resume */
		model = dt_models_paused > 0 ? dt_model_lookup_id(t->key.model_id) : NULL;
		/*
		 * ... and so do the timers of a twin its node gave away (a partition
		 * moving to another node), until the reload that follows the move
		 * forgets them
		 */
		if ((model != NULL && model->paused) || !dt_cluster_owns(t->key.twin_id))
		{
			t->parked = true;
			nparked++;
			continue;
		}
		due[ndue++] = t;
	}
	claimed_any = true;

	out = palloc(sizeof(DtEvent) * ndue);
	dt_timer_rows_open(&r);
	for (i = 0; i < ndue; i++)
	{
		DtTimer    *t = due[i];
		DtModel    *model = dt_model_lookup_id(t->key.model_id);
		bool		isnull;
		TimestampTz row_due;

		if (model == NULL || !dt_timer_rows_find(&r, &t->key))
		{
			/* gone with its model, or behind the worker's back */
			DtTimerKey	key = t->key;

			dt_index_remove(&key);
			continue;
		}
		row_due = DatumGetTimestampTz(slot_getattr(r.ks.slot, DT_TIMER_ATT_DUE_AT, &isnull));
		if (row_due > now)
		{
			/* changed behind the worker's back: believe the table */
			dt_index_set(&t->key, row_due);
			continue;
		}
		dt_timer_claimed(&out[n++], t, &r, model);
		dt_timer_rows_delete_found(&r);
	}
	dt_timer_rows_close(&r);

	qsort(out, n, sizeof(DtEvent), dt_timer_event_cmp);
	pfree(due);
	*events = out;
	return n;
}

/*
 * After the model cache was read again: the parked timers of models that
 * run again go back to the heap (due, so they fire in the next batch).
 * Those of dropped models are left to dt_timers_purge_models().
 */
void
dt_timers_unpark(void)
{
	HASH_SEQ_STATUS status;
	DtTimer    *t;

	if (!index_valid || nparked == 0)
		return;
	hash_seq_init(&status, index_timers);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		DtModel    *model;

		if (!t->parked)
			continue;
		model = dt_model_lookup_id(t->key.model_id);
		if (model == NULL || model->paused)
			continue;
		t->parked = false;
		nparked--;
		pairingheap_add(index_heap, &t->heap_node);
		t->in_heap = true;
	}
}

/* ----------------------------------------------------------------
 * Writing the batch's ops, before commit; applying them, after
 * ----------------------------------------------------------------
 */

typedef struct DtTimerArrays
{
	int			n;
	Size		bytes;
	Datum	   *model_ids;
	Datum	   *twin_ids;
	Datum	   *names;
	Datum	   *dues;
	Datum	   *everys;
	bool	   *every_nulls;
	Datum	   *payloads;
	Datum	   *fire_ids;
	Datum	   *depths;
} DtTimerArrays;

static void
dt_timer_upsert(DtTimerArrays *a)
{
	Datum		args[8];
	int			dims[1];
	int			lbs[1] = {1};
	int			ret;

	if (a->n == 0)
		return;
	if (upsert_plan == NULL)
	{
		Oid			types[8] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID, INTERVALARRAYOID, JSONBARRAYOID, INT8ARRAYOID, INT4ARRAYOID};

		upsert_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.timer_state "
										  "(model_id, twin_id, name, due_at, every, payload, fire_id, depth) "
										  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										  "pg_catalog.unnest($3), pg_catalog.unnest($4), "
										  "pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), "
										  "pg_catalog.unnest($8)) "
										  "ON CONFLICT (model_id, twin_id, name) DO UPDATE "
										  "SET due_at = EXCLUDED.due_at, every = EXCLUDED.every, "
										  "payload = EXCLUDED.payload, fire_id = EXCLUDED.fire_id, "
										  "depth = EXCLUDED.depth",
										  8, types);
	}
	dims[0] = a->n;
	args[0] = PointerGetDatum(construct_array(a->model_ids, a->n, INT4OID, 4, true, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(a->twin_ids, a->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(a->names, a->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_array(a->dues, a->n, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_md_array(a->everys, a->every_nulls, 1, dims, lbs,
												 INTERVALOID, sizeof(Interval), false,
												 TYPALIGN_DOUBLE));
	args[5] = PointerGetDatum(construct_array(a->payloads, a->n, JSONBOID, -1, false, TYPALIGN_INT));
	args[6] = PointerGetDatum(construct_array(a->fire_ids, a->n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[7] = PointerGetDatum(construct_array(a->depths, a->n, INT4OID, 4, true, TYPALIGN_INT));
	ret = SPI_execute_plan(upsert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT || SPI_processed != (uint64) a->n)
		elog(ERROR, "digitaltwin: wrote " UINT64_FORMAT " of %d timers", SPI_processed, a->n);
	a->n = 0;
	a->bytes = 0;
}

/*
 * Write the batch's timers to timer_state: armed ones upserted with one
 * statement (every DT_FLUSH_BYTES of payloads), cancelled ones deleted
 * through the primary key.  In the batch's transaction, SPI connected.
 *
 * Each arming takes the id its fire will have from the events' sequence
 * and stores it with the timer, so that a fire has the same id however
 * often it is attempted: a worker restarted because a model ignored its
 * timeout while firing a timer dead-letters that fire by its id (see
 * worker.c, doomed events), as it does a queued event.
 */
void
dt_timers_persist(void)
{
	HASH_SEQ_STATUS status;
	DtTimerOp  *op;
	DtTimerArrays a;
	long		n;
	DtTimerRows r;
	bool		rows_open = false;
	Oid			seq;

	if (ops == NULL)
		return;
	n = Max(hash_get_num_entries(ops), 1);
	a.n = 0;
	a.bytes = 0;
	a.model_ids = palloc(sizeof(Datum) * n);
	a.twin_ids = palloc(sizeof(Datum) * n);
	a.names = palloc(sizeof(Datum) * n);
	a.dues = palloc(sizeof(Datum) * n);
	a.everys = palloc(sizeof(Datum) * n);
	a.every_nulls = palloc(sizeof(bool) * n);
	a.payloads = palloc(sizeof(Datum) * n);
	a.fire_ids = palloc(sizeof(Datum) * n);
	a.depths = palloc(sizeof(Datum) * n);
	seq = dt_extension_relid("events_id_seq");

	hash_seq_init(&status, ops);
	while ((op = hash_seq_search(&status)) != NULL)
	{
		switch (op->state)
		{
			case DT_OP_UNCHANGED:
				break;
			case DT_OP_GONE:
				if (op->committed && !op->claimed)
				{
					if (!rows_open)
						dt_timer_rows_open(&r);
					rows_open = true;
					if (dt_timer_rows_find(&r, &op->key))
						dt_timer_rows_delete_found(&r);
				}
				break;
			case DT_OP_FIRING:
				/* never left so by a batch; put it back if it were */
			case DT_OP_ARMED:
				a.model_ids[a.n] = Int32GetDatum(op->key.model_id);
				a.twin_ids[a.n] = CStringGetTextDatum(op->key.twin_id);
				a.names[a.n] = CStringGetTextDatum(op->key.name);
				a.dues[a.n] = TimestampTzGetDatum(op->due_at);
				a.everys[a.n] = IntervalPGetDatum(&op->every);
				a.every_nulls[a.n] = !op->has_every;
				a.payloads[a.n] = JsonbPGetDatum(op->payload);
				if (op->state == DT_OP_ARMED)
					op->fire_id = nextval_internal(seq, false);
				a.fire_ids[a.n] = Int64GetDatum(op->fire_id);
				a.depths[a.n] = Int32GetDatum(op->depth);
				a.bytes += VARSIZE(op->payload);
				a.n++;
				if (a.bytes >= DT_FLUSH_BYTES)
					dt_timer_upsert(&a);
				break;
		}
	}
	if (rows_open)
		dt_timer_rows_close(&r);
	dt_timer_upsert(&a);
}

/* After commit: the batch's timers become the index's. */
void
dt_timers_publish(void)
{
	HASH_SEQ_STATUS status;
	DtTimerOp  *op;

	if (ops != NULL && index_valid)
	{
		hash_seq_init(&status, ops);
		while ((op = hash_seq_search(&status)) != NULL)
		{
			if (op->state == DT_OP_ARMED || op->state == DT_OP_FIRING)
				dt_index_set(&op->key, op->due_at);
			else if (op->state == DT_OP_GONE)
				dt_index_remove(&op->key);
		}
	}
	ops = NULL;
	twin_ops = NULL;
	claimed_any = false;
}

/* The batch failed: a claim took timers off the heap, so reload. */
void
dt_timers_abandon(void)
{
	if (claimed_any)
		index_valid = false;
	ops = NULL;
	twin_ops = NULL;
	claimed_any = false;
}

void
dt_timers_forget_plans(void)
{
	if (upsert_plan)
		SPI_freeplan(upsert_plan);
	upsert_plan = NULL;
}
