/*-------------------------------------------------------------------------
 *
 * model_stats.c
 *	  Statistics per model: digitaltwin.model_stats and reset_stats().
 *
 * Two kinds of figures, kept apart on purpose:
 *
 *	  committed counters	events consumed (applied or dead-lettered), dead
 *							letters, alerts, model calls and their time,
 *							last error: one row per (model, worker) in
 *							digitaltwin.model_counters, added to in each
 *							batch's transaction (through the table AM
 *							where the worker's row exists, else by an
 *							upsert: dt_model_stats_flush).  They
 *							commit with the events they count, so they are
 *							exact after a crash (the batch that did not
 *							commit counted nothing), and they survive
 *							restarts and pg_dump.  A worker writes only its
 *							own rows: batches of different workers never
 *							wait for each other on them.
 *
 *	  progress				the events the batch in flight has applied so far
 *							and the rate, per model and worker, in the
 *							entry that counts the model's twins in shared
 *							memory (shmem.c); told at most every 100 ms
 *							while a batch runs and once when it ends, so
 *							that the view moves during a long batch
 *							instead of freezing until its commit.
 *
 * The tallies of the batch in flight live in a worker-local hash; a
 * failed segment's model calls stay counted in model_calls and its time
 * (they ran), while events and dead letters are counted once, from the
 * batch's final outcome, just before the commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/float.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_model_live_stats);
PG_FUNCTION_INFO_V1(digitaltwin_reset_stats);

/* progress is told at most this often while a batch runs */
#define DT_PROGRESS_INTERVAL_MS 100

/* the columns of digitaltwin.model_counters (version 1.10) */
#define DT_COUNTERS_ATT_MODEL_ID		1
#define DT_COUNTERS_ATT_WORKER			2
#define DT_COUNTERS_ATT_EVENTS			3
#define DT_COUNTERS_ATT_DEAD			4
#define DT_COUNTERS_ATT_ALERTS			5
#define DT_COUNTERS_ATT_CALLS			6
#define DT_COUNTERS_ATT_TIME			7
#define DT_COUNTERS_ATT_TIME_MAX		8
#define DT_COUNTERS_ATT_LAST_BATCH_AT	9
#define DT_COUNTERS_ATT_LAST_ERROR		10
#define DT_COUNTERS_ATT_LAST_ERROR_AT	11
#define DT_COUNTERS_ATT_STATS_RESET		12
#define DT_COUNTERS_NATTS				12

typedef struct DtModelTally
{
	int32		model_id;		/* hash key */
	/* the batch's counts, written with it */
	int64		events;			/* queue events consumed: applied or dead */
	int64		dead;
	int64		alerts;
	int64		calls;			/* model calls that returned */
	double		time_ms;
	double		time_max_ms;
	const char *last_error;		/* of the batch's last dead letter */
	/* progress told to shared memory */
	int64		applied;		/* events applied so far by the batch */
	int64		told;			/* ... of which shared memory knows */
	bool		in_batch;		/* touched by the batch in flight */
	bool		pending;		/* its counts are for the upsert to write */
} DtModelTally;

static HTAB *tallies = NULL;
static int	ntouched = 0;
static int	stats_partition = -1;
static TimestampTz last_told = 0;
static int	applied_since_check = 0;
static SPIPlanPtr upsert_plan = NULL;

/* model_counters and model_stats_resets, until an invalidation of either */
static Oid	counters_relid = InvalidOid;
static Oid	resets_relid = InvalidOid;
static bool counters_callback_registered = false;

static DtModelTally *
dt_tally(int32 model_id)
{
	DtModelTally *t;
	bool		found;

	t = hash_search(tallies, &model_id, HASH_ENTER, &found);
	if (!found)
	{
		memset(((char *) t) + sizeof(int32), 0, sizeof(DtModelTally) - sizeof(int32));
		t->model_id = model_id;
	}
	if (!t->in_batch)
	{
		t->in_batch = true;
		ntouched++;
	}
	return t;
}

/* A batch begins: its tallies start at zero. */
void
dt_model_stats_begin(int partition)
{
	HASH_SEQ_STATUS status;
	DtModelTally *t;

	stats_partition = partition;
	if (tallies == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(DtModelTally);
		ctl.hcxt = TopMemoryContext;
		tallies = hash_create("digitaltwin model tallies", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	/* forget the models the last batches did not see (dropped ones too) */
	hash_seq_init(&status, tallies);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (!t->in_batch)
			hash_search(tallies, &t->model_id, HASH_REMOVE, NULL);
		else
		{
			t->events = t->dead = t->alerts = t->calls = 0;
			t->time_ms = t->time_max_ms = 0;
			t->last_error = NULL;
			t->applied = t->told = 0;
			t->in_batch = false;
		}
	}
	ntouched = 0;
	applied_since_check = 0;
	last_told = GetCurrentTimestamp();
}

/*
 * Tell shared memory where the batch is.  ending: the batch is over
 * (committed: its events count in the rate; rolled back: what was told of
 * it is taken back).
 */
static void
dt_model_stats_tell(bool ending, bool committed)
{
	HASH_SEQ_STATUS status;
	DtModelTally *t;
	DtModelProgress *progress;
	int			n = 0;

	if (tallies == NULL || ntouched == 0)
		return;
	progress = palloc(sizeof(DtModelProgress) * ntouched);
	hash_seq_init(&status, tallies);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (!t->in_batch)
			continue;
		progress[n].model_id = t->model_id;
		if (!ending)
		{
			progress[n].in_flight = t->applied;
			progress[n].new_events = t->applied - t->told;
			t->told = t->applied;
		}
		else
		{
			progress[n].in_flight = 0;
			progress[n].new_events = committed ? t->events - t->told : -t->told;
			t->told = 0;
			t->applied = 0;
		}
		n++;
	}
	dt_model_progress_publish(stats_partition, progress, n);
	pfree(progress);
}

/*
 * An event of the model was applied (its model call returned) after
 * 'elapsed' of model time.  Called for every applied event: keep it cheap;
 * the clock is read once every 64 events (or after a call of 1 ms or
 * more) to see whether to tell.
 */
void
dt_model_stats_applied(int32 model_id, double elapsed_ms)
{
	DtModelTally *t = dt_tally(model_id);

	t->calls++;
	t->time_ms += elapsed_ms;
	if (elapsed_ms > t->time_max_ms)
		t->time_max_ms = elapsed_ms;
	t->applied++;
	if (++applied_since_check >= 64 || elapsed_ms >= 1.0)
	{
		TimestampTz now = GetCurrentTimestamp();

		applied_since_check = 0;
		if (TimestampDifferenceExceeds(last_told, now, DT_PROGRESS_INTERVAL_MS))
		{
			dt_model_stats_tell(false, false);
			last_told = now;
		}
	}
}

static void
dt_model_stats_count_alert(int32 model_id, void *arg)
{
	dt_tally(model_id)->alerts++;
}

/* The batch's events and dead letters, from its final outcome. */
static void
dt_model_stats_count_events(DtEvent *batch, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		DtModel    *model;
		DtModelTally *t;

		/* a timer's fire is a model call, not an event of the queue */
		if (batch[i].timer != NULL)
			continue;
		model = dt_model_lookup(batch[i].model);
		if (model == NULL)
			continue;
		t = dt_tally(model->id);
		t->events++;
		if (batch[i].dead)
		{
			t->dead++;
			t->last_error = psprintf("%s (SQLSTATE %s)", batch[i].error, batch[i].sqlstate);
		}
	}
}

static void
dt_counters_inval_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == counters_relid || relid == resets_relid)
	{
		counters_relid = InvalidOid;
		resets_relid = InvalidOid;
	}
}

/*
 * Look up model_counters and model_stats_resets, once until either is
 * invalidated (dropped with the extension); false when there are none (a
 * library newer than the extension: no tables before version 1.10).
 */
static bool
dt_counters_tables(void)
{
	Oid			counters;
	Oid			resets;

	if (!counters_callback_registered)
	{
		CacheRegisterRelcacheCallback(dt_counters_inval_callback, (Datum) 0);
		counters_callback_registered = true;
	}
	if (OidIsValid(counters_relid))
		return true;
	if (!dt_table_exists("model_counters"))
		return false;
	/* both set at once: a lookup may take invalidations in */
	counters = dt_extension_relid("model_counters");
	resets = dt_extension_relid("model_stats_resets");
	counters_relid = counters;
	resets_relid = resets;
	return true;
}

/*
 * Whether a table has triggers other than its foreign keys' checks (a
 * superuser's, as t/020 adds one to make the batches fail): a statement
 * fires them, a write through the table AM would not.
 */
static bool
dt_has_own_triggers(Relation rel)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	int			i;

	for (i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		if (!trigdesc->triggers[i].tgisinternal)
			return true;
	}
	return false;
}

/*
 * Whether model_counters still has the columns of version 1.10, in order
 * and of their types: the fast path writes them by position.
 */
static bool
dt_counters_shape_known(TupleDesc desc)
{
	static const Oid types[DT_COUNTERS_NATTS] = {INT4OID, INT4OID, INT8OID, INT8OID,
		INT8OID, INT8OID, FLOAT8OID, FLOAT8OID, TIMESTAMPTZOID, TEXTOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID};

	return dt_columns_are(desc, types, DT_COUNTERS_NATTS);
}

/* a + b as int8pl computes it, overflow included */
static Datum
dt_counter_sum(Datum a, int64 b)
{
	int64		sum;

	if (pg_add_s64_overflow(DatumGetInt64(a), b, &sum))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bigint out of range")));
	return Int64GetDatum(sum);
}

/*
 * The new version of a worker's row of the model (values and isnull hold
 * the old one): the batch's tally added, by the rule of the upsert's ON
 * CONFLICT clause (dt_counters_upsert), which this follows to the letter.
 * reset: the model's reset_at as the snapshot sees it, NULL if none.
 */
static void
dt_counters_add(Datum *values, bool *isnull, const DtModelTally *t,
				const TimestampTz *reset, TimestampTz now)
{
#define COL(name) (DT_COUNTERS_ATT_##name - 1)
	Datum		old_reset = values[COL(STATS_RESET)];
	bool		keep;

	/* KEEP: the row counts from the model's last reset */
	keep = reset == NULL ||
		(!isnull[COL(STATS_RESET)] && *reset <= DatumGetTimestampTz(old_reset));
	if (keep)
	{
		double		old_max = DatumGetFloat8(values[COL(TIME_MAX)]);

		values[COL(EVENTS)] = dt_counter_sum(values[COL(EVENTS)], t->events);
		values[COL(DEAD)] = dt_counter_sum(values[COL(DEAD)], t->dead);
		values[COL(ALERTS)] = dt_counter_sum(values[COL(ALERTS)], t->alerts);
		values[COL(CALLS)] = dt_counter_sum(values[COL(CALLS)], t->calls);
		values[COL(TIME)] = Float8GetDatum(float8_pl(DatumGetFloat8(values[COL(TIME)]),
													 t->time_ms));
		values[COL(TIME_MAX)] = Float8GetDatum(float8_lt(old_max, t->time_max_ms) ?
											   t->time_max_ms : old_max);
	}
	else
	{
		/* stale: it starts again from this batch, at the model's reset */
		values[COL(EVENTS)] = Int64GetDatum(t->events);
		values[COL(DEAD)] = Int64GetDatum(t->dead);
		values[COL(ALERTS)] = Int64GetDatum(t->alerts);
		values[COL(CALLS)] = Int64GetDatum(t->calls);
		values[COL(TIME)] = Float8GetDatum(t->time_ms);
		values[COL(TIME_MAX)] = Float8GetDatum(t->time_max_ms);
		values[COL(STATS_RESET)] = TimestampTzGetDatum(*reset);
		isnull[COL(STATS_RESET)] = false;
		isnull[COL(LAST_ERROR)] = isnull[COL(LAST_ERROR_AT)] = true;
	}
	values[COL(LAST_BATCH_AT)] = TimestampTzGetDatum(now);
	isnull[COL(LAST_BATCH_AT)] = false;
	if (t->last_error != NULL)
	{
		values[COL(LAST_ERROR)] = CStringGetTextDatum(t->last_error);
		values[COL(LAST_ERROR_AT)] = TimestampTzGetDatum(now);
		isnull[COL(LAST_ERROR)] = isnull[COL(LAST_ERROR_AT)] = false;
	}
#undef COL
}

/* The model's reset_at in model_stats_resets, NULL if it has none. */
static TimestampTz *
dt_model_reset_at(DtKeyScan *resets, int32 model_id, TimestampTz *reset_at)
{
	ScanKeyData key;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(model_id));
	if (!dt_key_scan_fetch(resets, &key))
		return NULL;
	/* reset_at: the second column, NOT NULL */
	*reset_at = DatumGetTimestampTz(resets->slot->tts_values[1]);
	return reset_at;
}

/*
 * The fast path: add the batch's tallies to the rows the worker has
 * already, straight through the table AM (dt_row_updater_open), instead
 * of the upsert, which costs a quarter of a worker's time when batches
 * are of a few events (single-row INSERTs).  The model's reset and its
 * row are read with a snapshot taken now, as the statement would.  A
 * tally is left pending, for the upsert to write, when its model has no
 * row for this worker yet (its first batch here; or a row deleted
 * meanwhile by someone's DELETE), or when the row changed since the
 * snapshot: the upsert's ON CONFLICT handles both, and keeps the logic of
 * a new row and of a conflict in one place.  Returns how many are left.
 */
static int
dt_counters_update(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	DtModelTally *t;
	DtRowUpdater u;
	DtKeyScan	resets;
	ScanKeyData keys[2];
	int			pending = 0;

	hash_seq_init(&status, tallies);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		t->pending = t->in_batch;
		if (t->pending)
			pending++;
	}

	PushActiveSnapshot(GetTransactionSnapshot());
	dt_row_updater_open(&u, counters_relid, GetActiveSnapshot());
	/*
	 * A table changed by its owner (a column added, a trigger) is written
	 * by the upsert, which names its columns and fires what a statement
	 * fires.
	 */
	if (!dt_counters_shape_known(RelationGetDescr(u.find.rel)) ||
		dt_has_own_triggers(u.find.rel))
	{
		dt_row_updater_close(&u);
		PopActiveSnapshot();
		return pending;
	}
	dt_key_scan_open(&resets, resets_relid, AccessShareLock, GetActiveSnapshot());
	hash_seq_init(&status, tallies);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		TimestampTz reset_at;

		if (!t->pending)
			continue;
		ScanKeyInit(&keys[0], DT_COUNTERS_ATT_MODEL_ID, BTEqualStrategyNumber,
					F_INT4EQ, Int32GetDatum(t->model_id));
		ScanKeyInit(&keys[1], DT_COUNTERS_ATT_WORKER, BTEqualStrategyNumber,
					F_INT4EQ, Int32GetDatum(stats_partition));
		if (!dt_row_updater_find(&u, keys))
			continue;
		dt_counters_add(u.newslot->tts_values, u.newslot->tts_isnull, t,
						dt_model_reset_at(&resets, t->model_id, &reset_at), now);
		if (dt_row_updater_write(&u))
		{
			t->pending = false;
			pending--;
		}
	}
	dt_key_scan_close(&resets);
	dt_row_updater_close(&u);
	PopActiveSnapshot();
	return pending;
}

/*
 * The slow path: the pending tallies (n of them) added with one INSERT ...
 * ON CONFLICT DO UPDATE, which makes a new row or adds to the existing one.
 */
static void
dt_counters_upsert(int n, TimestampTz now)
{
	HASH_SEQ_STATUS status;
	DtModelTally *t;
	Datum	   *cols[8];
	bool	   *error_nulls;
	Datum		args[10];
	int			dims[1];
	int			lbs[1] = {1};
	int			rows = 0;
	int			i;
	int			ret;

	if (upsert_plan == NULL)
	{
		Oid			types[10] = {INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
			INT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID,
		INT4OID, TIMESTAMPTZOID};

		/*
		 * KEEP: the row counts from its model's last reset (see the 1.10
		 * script): add to it; otherwise it is stale, start it again from
		 * this batch's counts.  The new row or the kept one takes the reset
		 * it counts from, as this batch's snapshot sees it.  The fast path
		 * (dt_counters_add) follows the same rule.
		 */
#define KEEP "(excluded.stats_reset IS NULL OR (c.stats_reset IS NOT NULL AND " \
			 "excluded.stats_reset OPERATOR(pg_catalog.<=) c.stats_reset))"
#define ADD(col) " " col " = CASE WHEN " KEEP " THEN c." col " OPERATOR(pg_catalog.+) excluded." col \
			 " ELSE excluded." col " END, "
		upsert_plan = dt_spi_prepare_kept(
			"INSERT INTO digitaltwin.model_counters AS c "
			"(model_id, worker, events_processed, dead_letters, alerts, model_calls, "
			" model_time_ms, model_time_max_ms, last_error, last_batch_at, last_error_at, stats_reset) "
			"SELECT u.m, $9, u.e, u.d, u.a, u.c, u.t, u.x, u.err, $10, "
			"       CASE WHEN u.err IS NULL THEN NULL ELSE $10 END, r.reset_at "
			"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
			"  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
			"  pg_catalog.unnest($7), pg_catalog.unnest($8)) AS u(m, e, d, a, c, t, x, err) "
			"LEFT JOIN digitaltwin.model_stats_resets r ON r.model_id OPERATOR(pg_catalog.=) u.m "
			"ON CONFLICT (model_id, worker) DO UPDATE SET "
			ADD("events_processed") ADD("dead_letters") ADD("alerts") ADD("model_calls")
			ADD("model_time_ms")
			" model_time_max_ms = CASE WHEN " KEEP
			"   THEN GREATEST(c.model_time_max_ms, excluded.model_time_max_ms)"
			"   ELSE excluded.model_time_max_ms END, "
			" last_batch_at = excluded.last_batch_at, "
			" last_error = COALESCE(excluded.last_error, CASE WHEN " KEEP " THEN c.last_error END), "
			" last_error_at = COALESCE(excluded.last_error_at, CASE WHEN " KEEP " THEN c.last_error_at END), "
			" stats_reset = CASE WHEN " KEEP " THEN c.stats_reset ELSE excluded.stats_reset END",
			10, types);
#undef ADD
#undef KEEP
	}

	for (i = 0; i < 8; i++)
		cols[i] = palloc(sizeof(Datum) * n);
	error_nulls = palloc(sizeof(bool) * n);
	hash_seq_init(&status, tallies);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (!t->pending)
			continue;
		cols[0][rows] = Int32GetDatum(t->model_id);
		cols[1][rows] = Int64GetDatum(t->events);
		cols[2][rows] = Int64GetDatum(t->dead);
		cols[3][rows] = Int64GetDatum(t->alerts);
		cols[4][rows] = Int64GetDatum(t->calls);
		cols[5][rows] = Float8GetDatum(t->time_ms);
		cols[6][rows] = Float8GetDatum(t->time_max_ms);
		cols[7][rows] = t->last_error ? CStringGetTextDatum(t->last_error) : (Datum) 0;
		error_nulls[rows] = (t->last_error == NULL);
		rows++;
	}
	Assert(rows == n);
	dims[0] = rows;
	args[0] = PointerGetDatum(construct_array(cols[0], rows, INT4OID, 4, true, TYPALIGN_INT));
	for (i = 1; i <= 4; i++)
		args[i] = PointerGetDatum(construct_array(cols[i], rows, INT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	for (i = 5; i <= 6; i++)
		args[i] = PointerGetDatum(construct_array(cols[i], rows, FLOAT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[7] = PointerGetDatum(construct_md_array(cols[7], error_nulls, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[8] = Int32GetDatum(stats_partition);
	args[9] = TimestampTzGetDatum(now);

	ret = SPI_execute_plan(upsert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
}

/*
 * Add the batch's counts to the worker's rows of model_counters, in the
 * batch's transaction (SPI connected), before the alerts are flushed:
 * through the table AM where the rows exist, else with the upsert.
 * Events of a model dropped before they were applied count nowhere.
 */
void
dt_model_stats_flush(DtEvent *batch, int n)
{
	TimestampTz now;
	int			pending;

	dt_model_stats_count_events(batch, n);
	dt_alerts_each_model(dt_model_stats_count_alert, NULL);
	if (ntouched == 0 || !dt_counters_tables())
		return;
	now = GetCurrentTimestamp();
	pending = dt_counters_update(now);
	if (pending > 0)
		dt_counters_upsert(pending, now);
}

/* The batch committed: its events count in the rate, none is in flight. */
void
dt_model_stats_committed(void)
{
	dt_model_stats_tell(true, true);
}

/* The batch failed: take back the progress told of it. */
void
dt_model_stats_abandon(void)
{
	if (stats_partition >= 0)
		dt_model_stats_tell(true, false);
	if (tallies != NULL)
	{
		HASH_SEQ_STATUS status;
		DtModelTally *t;

		hash_seq_init(&status, tallies);
		while ((t = hash_seq_search(&status)) != NULL)
			t->in_batch = false;
	}
	ntouched = 0;
}

void
dt_model_stats_forget_plans(void)
{
	if (upsert_plan != NULL)
		SPI_freeplan(upsert_plan);
	upsert_plan = NULL;
}

/* ----------------------------------------------------------------
 * SQL functions
 * ----------------------------------------------------------------
 */

/*
 * _model_live_stats(): per model and worker, what shared memory knows
 * (twins, events in flight, rate); the view digitaltwin.model_stats adds
 * it to the committed counters.
 */
Datum
digitaltwin_model_live_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DtModelLive *rows;
	int			n;
	int			i;

	Oid			user = GetUserId();
	HTAB	   *allowed = NULL;

	dt_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	if (dt_database_current() == NULL)
		return (Datum) 0;
	/*
	 * Only the models the caller may read, as in model_stats: the function
	 * is granted with 'read' on one model (grant_model()), and called
	 * directly it must not show the others' twins and rates.
	 */
	if (!dt_may_all_models(user, DT_RIGHT_READ))
		allowed = dt_model_ids_allowed(user, DT_RIGHT_READ);
	n = dt_model_live_collect(&rows);
	for (i = 0; i < n; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		if (allowed != NULL &&
			hash_search(allowed, &rows[i].model_id, HASH_FIND, NULL) == NULL)
			continue;
		values[0] = Int32GetDatum(rows[i].model_id);
		values[1] = Int32GetDatum(rows[i].partition);
		values[2] = Int64GetDatum(rows[i].twins);
		values[3] = Int64GetDatum(rows[i].in_flight);
		values[4] = Float8GetDatum(rows[i].events_per_second);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The per-worker counters of digitaltwin.stats start again from 0. */
static void
dt_reset_worker_counters(void)
{
	DtDatabase *db = dt_database_current();
	int			i;

	for (i = 0; db != NULL && i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		pg_atomic_write_u64(&slot->events_processed, 0);
		pg_atomic_write_u64(&slot->dead_letters, 0);
		pg_atomic_write_u64(&slot->alerts, 0);
		pg_atomic_write_u64(&slot->batches, 0);
		SpinLockAcquire(&slot->mutex);
		slot->last_error[0] = '\0';
		SpinLockRelease(&slot->mutex);
	}
}

/*
 * reset_stats(model DEFAULT NULL): the committed counters of one model, or
 * of all models and the workers' counters of digitaltwin.stats, start
 * again from 0; stats_since says when.  For digitaltwin_admin (one model:
 * also for whoever may administer it).  The reset is a row of
 * model_stats_resets, not an update of the counters: a reset kept open in
 * a transaction must not hold up the batches that add to them.
 */
Datum
digitaltwin_reset_stats(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	DtTrustedScope scope;
	char	   *name = NULL;
	Datum		id = (Datum) 0;
	int			ret;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.reset_stats()");
	if (!PG_ARGISNULL(0))
		name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (name == NULL && !dt_is_admin(caller))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to reset the statistics of every model"),
				 errhint("Members of digitaltwin_admin may reset them; a model's administrators may reset that model's with reset_stats(model).")));

	dt_trusted_enter(&scope);
	if (name != NULL)
		id = dt_model_admin_row(name, caller, "reset the statistics of");
	ret = SPI_execute_with_args("INSERT INTO digitaltwin.model_stats_resets (model_id, reset_at) "
								"SELECT m.id, pg_catalog.now() FROM digitaltwin.models m "
								"WHERE $1::pg_catalog.int4 IS NULL OR m.id OPERATOR(pg_catalog.=) $1 "
								"ON CONFLICT (model_id) DO UPDATE SET reset_at = excluded.reset_at",
								1, (Oid[]) {INT4OID}, &id, name ? " " : "n", false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	dt_trusted_leave(&scope);

	if (name == NULL)
		dt_reset_worker_counters();
	PG_RETURN_VOID();
}
