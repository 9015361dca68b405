/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Helpers every other file uses; this file calls none of them.
 *
 * The preload check, the refusal of calls from inside a model, kept SPI
 * plans, and the trusted scope: how a statement runs with rights other than
 * its caller's (docs/architecture.md, "Trust rules").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "commands/async.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "storage/bufmgr.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/syscache.h"
#include "utils/snapmgr.h"

#include "dt_internal.h"

/* set by _PG_init when loaded through shared_preload_libraries */
bool		dt_preloaded = false;
bool		dt_is_worker = false;

/* the event a worker's model call is processing, else NULL */
DtCurrentEvent *dt_current_event = NULL;

/*
 * Events sent from inside a model (messages), counted by send() when it
 * stages one (messages.c) and by the default of events.sender_model (an
 * INSERT), rolled back or not: the worker only needs to know whether a
 * batch may have sent any (wait_idle).
 */
uint64		dt_messages_sent = 0;

/* A text argument that must not be NULL, as a C string. */
char *
dt_text_arg(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

void
dt_require_preload(void)
{
	if (!dt_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("digitaltwin must be loaded via shared_preload_libraries"),
				 errhint("Add 'digitaltwin' to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * The event a worker's model call is processing, for the functions that
 * only make sense there (alert(), set_timer(), send_to_source(),
 * current_event()): ERROR 55000 elsewhere, saying what the call belongs
 * to ('detail') and, if given, where to make it ('hint').
 */
DtCurrentEvent *
dt_require_model_call(const char *function, const char *detail, const char *hint)
{
	if (dt_current_event == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s can only be called from a model function", function),
				 errdetail("%s", detail),
				 hint ? errhint("%s", hint) : 0));
	return dt_current_event;
}

/*
 * Whether the extension's schema has this table: an installation not yet
 * updated (ALTER EXTENSION UPDATE) lacks the tables of later versions.
 */
bool
dt_table_exists(const char *relname)
{
	return OidIsValid(get_relname_relid(relname, get_namespace_oid("digitaltwin", false)));
}

/*
 * A C model built against a newer digitaltwin.h may call a function whose
 * table a later version of the extension brings: until ALTER EXTENSION
 * UPDATE, a clear error (which dead-letters the event), not a failed batch.
 */
void
dt_require_table(const char *relname, const char *version, const char *function)
{
	if (!dt_table_exists(relname))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs version %s of extension \"digitaltwin\"", function, version),
				 errhint("Run ALTER EXTENSION digitaltwin UPDATE.")));
}

/*
 * t + iv without "timestamp out of range": 0 with *result set, or >0 (<0)
 * when the sum would lie beyond the end (before the start) of the range of
 * timestamps.  Adding an interval is calendar arithmetic, but it lands
 * within a few days of the interval's length taken as 30.44-day months and
 * 24-hour days, so that estimate decides near the limits (30 days of
 * margin); elsewhere the exact sum cannot overflow.  For a deadline of
 * wait_idle() and the due times of timers, which nothing may fail on.
 */
int
dt_timestamp_plus_interval(TimestampTz t, const Interval *iv, TimestampTz *result)
{
	const double margin = 30.0 * USECS_PER_DAY;
	double		approx;

	approx = (double) t + (double) iv->time +
		(double) iv->day * USECS_PER_DAY +
		(double) iv->month * (DAYS_PER_YEAR / MONTHS_PER_YEAR) * USECS_PER_DAY;
	if (approx > (double) END_TIMESTAMP - margin)
		return 1;
	if (approx < (double) MIN_TIMESTAMP + margin)
		return -1;
	*result = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													  TimestampTzGetDatum(t),
													  IntervalPGetDatum(iv)));
	return 0;
}

/*
 * Functions a model must not call: waiting for the workers from inside a
 * worker would wait for itself, and registering or dropping models would
 * change the registry under the batch that is using it.
 */
void
dt_forbid_in_model(const char *function)
{
	if (dt_current_event != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot be called from a model function", function),
				 errdetail("Model functions run inside the background workers' batches.")));
	if (dt_migration_running)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s cannot be called from a migrate function", function),
				 errdetail("The migration of alter_model() is converting the states of a model.")));
}

/* set by lifecycle.c while a migrate function runs */
bool		dt_migration_running = false;

/*
 * Call fn for every row of an open SPI cursor, 10000 rows at a time, with
 * each lot's tuples freed before the next: loading a partition's twins or
 * timers never holds more than one lot in memory.
 */
void
dt_spi_cursor_each(Portal portal, dt_row_fn fn, void *arg)
{
	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
			fn(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/*
 * Run fn(arg) in a subtransaction, under lock_timeout (milliseconds, as
 * text) if given: on error everything it did is rolled back, the error is
 * reported at elevel as "<failure>: <message>", and false is returned.
 * For work a worker may give up on without failing its transaction.
 */
bool
dt_run_guarded(void (*fn) (void *arg), void *arg, const char *lock_timeout,
			   int elevel, const char *failure)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool done = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (lock_timeout != NULL)
			(void) set_config_option("lock_timeout", lock_timeout, PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
		fn(arg);
		ReleaseCurrentSubTransaction();
		done = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(elevel, (errmsg("%s: %s", failure, edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return done;
}

/*
 * to_jsonb() for values of a type, in cxt: the function finds its
 * argument's type in its call expression, which a direct call lacks.
 */
void
dt_to_jsonb_fmgr(FmgrInfo *flinfo, Oid type, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	fmgr_info(F_TO_JSONB, flinfo);
	flinfo->fn_expr = (Node *)
		makeFuncExpr(F_TO_JSONB, JSONBOID,
					 list_make1(makeNullConst(type, -1, InvalidOid)),
					 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	MemoryContextSwitchTo(old);
}

/*
 * A one-dimensional array of n values of a type (nulls may be NULL: none),
 * the parameter of a statement that unnests it.
 */
Datum
dt_make_array(Datum *values, bool *nulls, int n, Oid type)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  type, typlen, typbyval, typalign));
}

/*
 * Prepare a statement the workers run at every batch, and keep it for the
 * life of the process (until the extension is re-created).
 */
SPIPlanPtr
dt_spi_prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Run a read-only query (inside SPI) with a snapshot taken now, not the
 * statement's or the transaction's: for caches that must not keep what a
 * change they were told of (an invalidation already consumed) has undone
 * (rights.c, cluster.c).  Its rows are in SPI_tuptable.
 */
void
dt_spi_read_latest(const char *sql)
{
	int			ret;

	PushActiveSnapshot(GetLatestSnapshot());
	ret = SPI_execute(sql, true, 0);
	PopActiveSnapshot();
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
}

/*
 * Open a GUC nest level with the given search_path; the caller ends it with
 * AtEOXact_GUC(false, level), which also throws away whatever was set in it
 * meanwhile.  Aborting the (sub)transaction ends it too.
 */
static int
dt_push_search_path(const char *search_path)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", search_path,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * A nest level with search_path = pg_catalog, pg_temp (pg_temp last: never
 * searched first for relations and types, and never for functions and
 * operators).
 */
int
dt_pin_search_path(void)
{
	return dt_push_search_path(DT_TRUSTED_SEARCH_PATH);
}

/*
 * Run a model author's code: as the model's owner, in a security-restricted
 * operation (no SET ROLE, temporary objects, PREPARE...), with the model's
 * search_path in a nest level of its own.  For model calls and for the
 * conversion of states in the live view.  dt_leave_model_owner() undoes it,
 * and so does the abort of a (sub)transaction started before.
 */
int
dt_become_model_owner(Oid owner, const char *search_path,
					  Oid *save_userid, int *save_sec_context)
{
	int			level = dt_push_search_path(search_path);

	GetUserIdAndSecContext(save_userid, save_sec_context);
	SetUserIdAndSecContext(owner, *save_sec_context | SECURITY_RESTRICTED_OPERATION);
	return level;
}

void
dt_leave_model_owner(Oid save_userid, int save_sec_context, int level)
{
	SetUserIdAndSecContext(save_userid, save_sec_context);
	AtEOXact_GUC(false, level);
}

/* The owner of the extension's tables (that of digitaltwin.models). */
static Oid
dt_extension_tables_owner(void)
{
	Oid			nsp = get_namespace_oid("digitaltwin", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("models", nsp) : InvalidOid;
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"digitaltwin\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION digitaltwin.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Statements on the extension's own tables run as the owner of those tables
 * (the registry through create_model()/drop_model(), the model-name check of
 * the events' CHECK constraint, the queue's generation and sequence, the
 * live view's fallback, DROP ROLE and REASSIGN OWNED), so a caller needs no
 * privilege on the tables themselves.  The caller's identity is checked
 * before the switch.
 *
 * Such a statement must not resolve anything through the caller's
 * search_path: an operator, function, type or cast planted in a schema the
 * caller controls (or in pg_temp) would run with the owner's rights.  So the
 * scope pins search_path = pg_catalog, pg_temp in a GUC nest level, undone
 * when the scope ends (and by the abort of the (sub)transaction on ERROR),
 * and the statements qualify every operator and type as well: either alone
 * would do, and the tests show it (sql/trust.sql).
 */
void
dt_trusted_enter(DtTrustedScope *scope)
{
	Oid			owner = dt_extension_tables_owner();

	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	scope->guc_level = dt_pin_search_path();
	SetUserIdAndSecContext(owner, scope->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	SPI_connect();
}

void
dt_trusted_leave(DtTrustedScope *scope)
{
	SPI_finish();
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
	AtEOXact_GUC(false, scope->guc_level);
}

/* ----------------------------------------------------------------
 * Notifications sent after a batch's commit (alerts, outbox)
 * ----------------------------------------------------------------
 */

void
dt_announce_add(DtAnnouncements *a, const char *payload)
{
	if (a->cxt == NULL)
		a->cxt = AllocSetContextCreate(TopMemoryContext, "digitaltwin announcements",
									   ALLOCSET_SMALL_SIZES);
	if (a->n == a->size)
	{
		a->size = Max(a->size * 2, 64);
		a->payloads = a->payloads == NULL ?
			MemoryContextAlloc(a->cxt, sizeof(char *) * a->size) :
			repalloc(a->payloads, sizeof(char *) * a->size);
	}
	a->payloads[a->n++] = MemoryContextStrdup(a->cxt, payload);
}

void
dt_announce_forget(DtAnnouncements *a)
{
	if (a->cxt != NULL)
		MemoryContextReset(a->cxt);
	a->payloads = NULL;
	a->n = a->size = 0;
}

/*
 * After the batch's commit: send its notifications, in a transaction of
 * their own.  A transaction that notifies takes a lock that serialises
 * every notifying commit of the database until its commit is over; in the
 * batch's own transaction that lock was held through the batch's WAL
 * flush, so the workers' commits waited for each other (and the listeners
 * for both).  This transaction has no xid, hence no WAL flush to wait for:
 * the lock is held for microseconds.  Its failure (a NOTIFY queue that a
 * stuck listener has filled) loses these notifications with a WARNING,
 * never the batch, which has committed, and never sends one twice.  A
 * worker that dies between the two commits sends none: notifications are
 * hints; the rows are in their tables (README).
 */
void
dt_announce_send(DtAnnouncements *a, const char *channel)
{
	MemoryContext old = CurrentMemoryContext;
	int			i;

	if (a->n == 0)
		return;
	PG_TRY();
	{
		StartTransactionCommand();
		for (i = 0; i < a->n; i++)
			Async_Notify(channel, a->payloads[i]);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("digitaltwin: %d notifications on channel \"%s\" were not sent: %s",
						a->n, channel, edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	dt_announce_forget(a);
}

/* ----------------------------------------------------------------
 * Rows of the extension's tables by primary key, through the table AM
 * ----------------------------------------------------------------
 */

/*
 * Look up rows of a table by its primary key, one index scan rescanned
 * per key: where a worker reads or writes a few rows per batch, a planned
 * statement would cost more than the work (stage.c, model_stats.c).  keys
 * passed to dt_key_scan_fetch() cover every column of the key, numbered
 * as the index's.
 */
void
dt_key_scan_open(DtKeyScan *ks, Oid relid, LOCKMODE lockmode, Snapshot snapshot)
{
	ks->rel = table_open(relid, lockmode);
	ks->index = index_open(RelationGetPrimaryKeyIndex(ks->rel), AccessShareLock);
	ks->nkeys = IndexRelationGetNumberOfKeyAttributes(ks->index);
	ks->slot = table_slot_create(ks->rel, NULL);
	ks->scan = index_beginscan(ks->rel, ks->index, snapshot, ks->nkeys, 0);
	ks->nblocks = InvalidBlockNumber;	/* looked up by the first place tried */
}

/*
 * The row of the key, as the scan's snapshot sees it, with every column
 * deformed into ks->slot (valid until the next fetch); false if none.
 */
bool
dt_key_scan_fetch(DtKeyScan *ks, ScanKey keys)
{
	index_rescan(ks->scan, keys, ks->nkeys, NULL, 0);
	if (!index_getnext_slot(ks->scan, ForwardScanDirection, ks->slot))
		return false;
	slot_getallattrs(ks->slot);

	/*
	 * The slot holds its own pin; the scan's pin on the same page would
	 * make every prune of it fail until the next lookup by key, which on
	 * the path of remembered places may never come (dt_page_needs_room).
	 */
	table_index_fetch_reset(ks->scan->xs_heapfetch);
	return true;
}

/*
 * Whether a table's columns are exactly these types, in this order, none
 * dropped: the shape the extension created, which code that reads or
 * writes its rows by position relies on.
 */
bool
dt_columns_are(TupleDesc desc, const Oid *types, int ntypes)
{
	int			i;

	if (desc->natts != ntypes)
		return false;
	for (i = 0; i < ntypes; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != types[i])
			return false;
	}
	return true;
}

/*
 * The tuple at offset off of a pinned heap page, set up as the heap's scans
 * set theirs up (its data points into the page); false if the line pointer
 * holds none (unused, dead or a redirect).
 */
bool
dt_page_tuple(Relation rel, Buffer buffer, OffsetNumber off, HeapTuple tuple)
{
	Page		page = BufferGetPage(buffer);
	ItemId		lp = PageGetItemId(page, off);

	if (!ItemIdIsNormal(lp))
		return false;
	tuple->t_data = (HeapTupleHeader) PageGetItem(page, lp);
	tuple->t_len = ItemIdGetLength(lp);
	tuple->t_tableOid = RelationGetRelid(rel);
	ItemPointerSet(&tuple->t_self, BufferGetBlockNumber(buffer), off);
	return true;
}

/* Does the row in ks->slot (all columns deformed) have this key? */
static bool
dt_key_scan_matches(DtKeyScan *ks, ScanKey keys)
{
	int			i;

	for (i = 0; i < ks->nkeys; i++)
	{
		AttrNumber	attno = ks->index->rd_index->indkey.values[i];

		if (ks->slot->tts_isnull[attno - 1] ||
			!DatumGetBool(FunctionCall2Coll(&keys[i].sk_func, keys[i].sk_collation,
											ks->slot->tts_values[attno - 1],
											keys[i].sk_argument)))
			return false;
	}
	return true;
}

/*
 * Is the page short of room for a few more versions of the row at 'off'
 * (four, or a quarter of the page), so that it should be pruned before the
 * row is updated?
 *
 * Why not prune at every visit, as an index scan would: on a table whose
 * rows are rewritten batch after batch at remembered places (twin_state),
 * the pages sit at their fillfactor, which is heap_page_prune_opt()'s own
 * threshold, so with small batches nearly every update began with a prune
 * that removed the one or two versions dead since the last one, a WAL
 * record each time (a tenth of the WAL of a stream of multi-row inserts,
 * measured).  Pruned only when room runs short, a page is pruned once per
 * several updates; the margin leaves several visits to do it (a prune
 * needs the page's only pin, and another worker may hold one), so that the
 * updates stay HOT.  Rows found by key (the counters, a twin's first
 * update) are pruned by the index fetch at every visit, as before.
 */
static bool
dt_page_needs_room(Buffer buffer, OffsetNumber off)
{
	Page		page = BufferGetPage(buffer);
	Size		need = BLCKSZ / 4;
	bool		short_of_room;

	LockBuffer(buffer, BUFFER_LOCK_SHARE);
	if (off <= PageGetMaxOffsetNumber(page))
	{
		ItemId		lp = PageGetItemId(page, off);

		if (ItemIdIsNormal(lp))
			need = Max(need, 4 * (MAXALIGN(ItemIdGetLength(lp)) + sizeof(ItemIdData)));
	}
	short_of_room = PageGetHeapFreeSpace(page) < need;
	LockBuffer(buffer, BUFFER_LOCK_UNLOCK);
	return short_of_room;
}

/*
 * The row of the key if it is at 'tid' (NULL or invalid: nowhere), a place
 * remembered by the caller, which may be stale (the row updated since, the
 * table vacuumed or rewritten, the place taken by another row): used only
 * when a row visible to the snapshot is there and has the key; only one
 * version of a row is visible to a snapshot, so that is the row.  The page
 * is pruned first when it is short of room (above), so that the next update
 * can still be HOT.
 */
static bool
dt_key_scan_try_place(DtKeyScan *ks, ItemPointer tid, ScanKey keys)
{
	ItemPointerData place;
	BlockNumber blkno;
	Buffer		buffer;

	if (tid == NULL || !ItemPointerIsValid(tid))
		return false;
	place = *tid;				/* 'tid' may be the slot's, cleared below */
	tid = &place;
	blkno = ItemPointerGetBlockNumber(tid);
	if (ks->nblocks == InvalidBlockNumber)
		ks->nblocks = RelationGetNumberOfBlocks(ks->rel);
	if (blkno >= ks->nblocks)
		return false;

	/*
	 * The slot may still pin this page (the row found before it): a prune
	 * needs the only pin, and a page that missed its one prune would fill up.
	 */
	ExecClearTuple(ks->slot);
	buffer = ReadBuffer(ks->rel, blkno);
	if (dt_page_needs_room(buffer, ItemPointerGetOffsetNumber(tid)))
		heap_page_prune_opt(ks->rel, buffer);
	ReleaseBuffer(buffer);
	if (!table_tuple_fetch_row_version(ks->rel, tid, ks->scan->xs_snapshot, ks->slot))
		return false;
	slot_getallattrs(ks->slot);
	return dt_key_scan_matches(ks, keys);
}

/*
 * As dt_key_scan_fetch(), trying first where the row was last seen:
 * looking a row up by its primary key was most of the cost of updating it
 * where the same rows are updated batch after batch.
 */
bool
dt_key_scan_fetch_at(DtKeyScan *ks, ItemPointer tid, ScanKey keys)
{
	return dt_key_scan_try_place(ks, tid, keys) || dt_key_scan_fetch(ks, keys);
}

/* The locks are kept to the end of the transaction. */
void
dt_key_scan_close(DtKeyScan *ks)
{
	index_endscan(ks->scan);
	ExecDropSingleTupleTableSlot(ks->slot);
	index_close(ks->index, NoLock);
	table_close(ks->rel, NoLock);
}

/*
 * Update rows of a table found by primary key, as an UPDATE statement
 * would, without planning one: the new version is written with
 * table_tuple_update, and index entries are added only when the update
 * could not be HOT.  No trigger fires: callers use it on tables whose only
 * triggers are their foreign keys' checks, which PostgreSQL skips too when
 * the key does not change (and callers change no key).  Constraints are
 * not checked either: callers write only values that satisfy them.
 */
void
dt_row_updater_open(DtRowUpdater *u, Oid relid, Snapshot snapshot)
{
	dt_key_scan_open(&u->find, relid, RowExclusiveLock, snapshot);
	u->snapshot = snapshot;
	u->estate = CreateExecutorState();
	u->estate->es_snapshot = snapshot;
	u->rri = makeNode(ResultRelInfo);
	/* no range table entry: to ExecInsertIndexTuples no column changed */
	InitResultRelInfo(u->rri, u->find.rel, 0, NULL, 0);
	ExecOpenIndices(u->rri, false);
	u->newslot = table_slot_create(u->find.rel, NULL);
}

/*
 * Find the row of the key; its values are copied into u->newslot (not yet
 * stored), for the caller to change before dt_row_updater_write().
 */
bool
dt_row_updater_find(DtRowUpdater *u, ScanKey keys)
{
	return dt_row_updater_find_at(u, NULL, keys);
}

/* The same, trying first where the row was (see dt_key_scan_fetch_at). */
bool
dt_row_updater_find_at(DtRowUpdater *u, ItemPointer tid, ScanKey keys)
{
	TupleTableSlot *oldslot = u->find.slot;
	int			natts = oldslot->tts_tupleDescriptor->natts;

	if (!dt_key_scan_fetch_at(&u->find, tid, keys))
		return false;
	ExecClearTuple(u->newslot);
	memcpy(u->newslot->tts_values, oldslot->tts_values, sizeof(Datum) * natts);
	memcpy(u->newslot->tts_isnull, oldslot->tts_isnull, sizeof(bool) * natts);
	return true;
}

/*
 * Replace the row found last with u->newslot's values (u->newslot->tts_tid
 * is then where the new version is).  False if another
 * transaction updated or deleted the row since the snapshot was taken (it
 * has committed: the update waits for it); what the caller does then
 * depends on who else may write the table.
 */
bool
dt_row_updater_write(DtRowUpdater *u)
{
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	bool		update_indexes;
	TM_Result	result;

	Assert(!TTS_EMPTY(u->find.slot));	/* a row found, not yet rewritten */
	ExecStoreVirtualTuple(u->newslot);
	result = table_tuple_update(u->find.rel, &u->find.slot->tts_tid, u->newslot,
								GetCurrentCommandId(true), u->snapshot,
								InvalidSnapshot, true, &tmfd, &lockmode,
								&update_indexes);
	if (result == TM_Updated || result == TM_Deleted)
		return false;
	if (result != TM_Ok)
		elog(ERROR, "digitaltwin: unexpected result %d updating a row of %s",
			 (int) result, RelationGetRelationName(u->find.rel));
	if (update_indexes && u->rri->ri_NumIndices > 0)
		(void) ExecInsertIndexTuples(u->rri, u->newslot, u->estate, true, false,
									 NULL, NIL);
	ResetPerTupleExprContext(u->estate);

	/*
	 * The old version is no longer needed (the new one was built from a
	 * copy; u->newslot's values may still point into the old page, but it
	 * holds no deformed column any more): unpin the page now, not at the
	 * next row, so that another worker's prune of it does not fail for our
	 * pin (dt_page_needs_room).
	 */
	ExecClearTuple(u->find.slot);
	return true;
}

/* The updates are made visible to the transaction's next commands. */
void
dt_row_updater_close(DtRowUpdater *u)
{
	ExecDropSingleTupleTableSlot(u->newslot);
	ExecCloseIndices(u->rri);
	FreeExecutorState(u->estate);
	dt_key_scan_close(&u->find);
	CommandCounterIncrement();
}
