/*-------------------------------------------------------------------------
 *
 * history.c
 *	  What a batch writes, for the models that asked for it, to the event
 *	  log (the events it applied) and to the state history (the state each
 *	  twin it changed ended the batch with).
 *
 * Both are written in the batch's transaction, after the model calls, in
 * one statement per table (arrays, as the alerts are), so they commit with
 * the states they explain and cannot disagree with them after a crash.
 * Nothing the model controls can make these statements fail: the values
 * are the batch's own (events already validated, states already checked),
 * and a row whose time no partition covers goes to the DEFAULT partition
 * (partitions.c).  A dead-lettered event is not logged (digitaltwin.
 * dead_letters has it); a retried one is, when it is applied.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

static SPIPlanPtr event_log_plan = NULL;
static SPIPlanPtr history_plan = NULL;

void
dt_history_forget_plans(void)
{
	if (event_log_plan)
		SPI_freeplan(event_log_plan);
	if (history_plan)
		SPI_freeplan(history_plan);
	event_log_plan = NULL;
	history_plan = NULL;
}


/* ----------------------------------------------------------------
 * Event log
 * ----------------------------------------------------------------
 */
#define DT_LOG_NCOLS 13			/* and logged_at, the same for a batch */
#define DT_LOG_MULTI_INSERT 1000	/* rows per table_multi_insert() */

static const Oid event_log_types[DT_LOG_NCOLS] = {
	INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, JSONBOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, INT8OID
};

typedef struct DtLogRows
{
	int			n;
	Size		bytes;
	Datum	   *cols[DT_LOG_NCOLS];
	bool	   *nulls[DT_LOG_NCOLS];
} DtLogRows;

static bool dt_event_log_multi_insert(DtLogRows *rows, TimestampTz logged_at);

static void
dt_event_log_execute(DtLogRows *rows)
{
	Datum		args[DT_LOG_NCOLS + 1];
	int			ret;
	int			c;

	if (rows->n == 0)
		return;
	if (dt_event_log_multi_insert(rows, GetCurrentStatementStartTimestamp()))
	{
		rows->n = 0;
		rows->bytes = 0;
		return;
	}
	if (event_log_plan == NULL)
	{
		Oid			types[DT_LOG_NCOLS + 1];

		for (c = 0; c < DT_LOG_NCOLS; c++)
			types[c] = get_array_type(event_log_types[c]);
		types[DT_LOG_NCOLS] = TIMESTAMPTZOID;
		event_log_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.event_log "
											 "(event_id, model_id, model, model_version, twin_id, kind, payload, "
											 " event_time, enqueued_at, sender_model, sender_twin, timer, retry_of, "
											 " logged_at) "
											 "SELECT *, $14 FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
											 "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
											 "pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), "
											 "pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), "
											 "pg_catalog.unnest($12), pg_catalog.unnest($13))",
											 DT_LOG_NCOLS + 1, types);
	}
	for (c = 0; c < DT_LOG_NCOLS; c++)
		args[c] = dt_make_array(rows->cols[c], rows->nulls[c], rows->n, event_log_types[c]);
	args[DT_LOG_NCOLS] = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	ret = SPI_execute_plan(event_log_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	rows->n = 0;
	rows->bytes = 0;
}

/*
 * The partition of the event log a batch writes to: every row of a batch
 * has the same logged_at, so the routing an INSERT through the parent
 * does for each row is done once, as PostgreSQL does it (the parent's
 * partition descriptor, under the same lock as an INSERT), and the rows
 * go in with one multi-insert (a WAL record per page, not per row).  NULL
 * when that is not safe: the partition has indexes or triggers (a DBA
 * added some) or another layout; the statement through the parent then
 * does it all.
 */
/* The partition has the parent's columns, in the same places (no dropped ones). */
static bool
dt_same_layout(TupleDesc parent, TupleDesc part)
{
	int			i;

	if (parent->natts != DT_LOG_NCOLS + 1 || part->natts != parent->natts)
		return false;
	for (i = 0; i < parent->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(parent, i);
		Form_pg_attribute b = TupleDescAttr(part, i);

		if (a->attisdropped || b->attisdropped || a->atttypid != b->atttypid ||
			strcmp(NameStr(a->attname), NameStr(b->attname)) != 0)
			return false;
	}
	return true;
}

static Relation
dt_event_log_partition(TimestampTz logged_at)
{
	Relation	parent = table_open(dt_extension_relid("event_log"), RowExclusiveLock);
	PartitionKey key = RelationGetPartitionKey(parent);
	PartitionDesc pd = RelationGetPartitionDesc(parent, true);
	PartitionBoundInfo bi = pd->boundinfo;
	Datum		value = TimestampTzGetDatum(logged_at);
	int			index = -1;
	Oid			relid;
	Relation	rel;

	if (bi != NULL && bi->ndatums > 0)
	{
		bool		equal;
		int			offset = partition_range_datum_bsearch(key->partsupfunc, key->partcollation,
														   bi, key->partnatts, &value, &equal);

		/* the bound at offset + 1 is the upper bound of its partition, if any */
		index = bi->indexes[offset + 1];
	}
	/*
	 * No partition of its own: the statement through the parent routes to
	 * the DEFAULT partition and re-checks its constraint there, as an
	 * ATTACH may be under way (worker 0 creates the partition).
	 */
	relid = index >= 0 ? pd->oids[index] : InvalidOid;
	if (!OidIsValid(relid))
	{
		table_close(parent, NoLock);
		return NULL;
	}
	rel = table_open(relid, RowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->trigdesc != NULL ||
		RelationGetIndexList(rel) != NIL ||
		(rel->rd_att->constr != NULL && rel->rd_att->constr->num_check > 0) ||
		!dt_same_layout(RelationGetDescr(parent), RelationGetDescr(rel)))
	{
		table_close(rel, NoLock);
		table_close(parent, NoLock);
		return NULL;
	}
	table_close(parent, NoLock);
	return rel;
}

/* Insert the rows into the batch's partition; false if it must be left to SQL. */
static bool
dt_event_log_multi_insert(DtLogRows *rows, TimestampTz logged_at)
{
	Relation	rel = dt_event_log_partition(logged_at);
	TupleTableSlot **slots;
	CommandId	cid = GetCurrentCommandId(true);
	int			done = 0;
	int			i;
	int			c;

	if (rel == NULL)
		return false;
	slots = palloc(sizeof(TupleTableSlot *) * Min(rows->n, DT_LOG_MULTI_INSERT));
	for (i = 0; i < Min(rows->n, DT_LOG_MULTI_INSERT); i++)
		slots[i] = table_slot_create(rel, NULL);
	while (done < rows->n)
	{
		int			n = Min(rows->n - done, DT_LOG_MULTI_INSERT);

		for (i = 0; i < n; i++)
		{
			TupleTableSlot *slot = slots[i];

			ExecClearTuple(slot);
			for (c = 0; c < DT_LOG_NCOLS; c++)
			{
				slot->tts_values[c] = rows->cols[c][done + i];
				slot->tts_isnull[c] = rows->nulls[c][done + i];
			}
			slot->tts_values[DT_LOG_NCOLS] = TimestampTzGetDatum(logged_at);
			slot->tts_isnull[DT_LOG_NCOLS] = false;
			ExecStoreVirtualTuple(slot);
		}
		table_multi_insert(rel, slots, n, cid, 0, NULL);
		done += n;
	}
	for (i = 0; i < Min(rows->n, DT_LOG_MULTI_INSERT); i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	return true;
}

static void
dt_event_log_add(DtLogRows *rows, DtEvent *ev, DtModel *model)
{
	int			i = rows->n++;

	rows->cols[0][i] = Int64GetDatum(ev->id);
	rows->cols[1][i] = Int32GetDatum(model->id);
	rows->cols[2][i] = CStringGetTextDatum(model->name);
	rows->cols[3][i] = Int32GetDatum(model->version);
	rows->cols[4][i] = CStringGetTextDatum(ev->twin_id);
	rows->cols[5][i] = CStringGetTextDatum(dt_event_kind(ev));
	rows->cols[6][i] = JsonbPGetDatum(ev->payload);
	rows->nulls[6][i] = (ev->payload == NULL);
	rows->cols[7][i] = TimestampTzGetDatum(ev->event_time);
	rows->cols[8][i] = TimestampTzGetDatum(ev->enqueued_at);
	rows->nulls[9][i] = (ev->sender_model == NULL);
	if (ev->sender_model)
		rows->cols[9][i] = CStringGetTextDatum(ev->sender_model);
	rows->nulls[10][i] = (ev->sender_twin == NULL);
	if (ev->sender_twin)
		rows->cols[10][i] = CStringGetTextDatum(ev->sender_twin);
	rows->nulls[11][i] = (ev->timer == NULL);
	if (ev->timer)
		rows->cols[11][i] = CStringGetTextDatum(ev->timer);
	rows->cols[12][i] = Int64GetDatum(ev->retry_of);
	rows->nulls[12][i] = (ev->retry_of == 0);
	rows->bytes += ev->payload ? VARSIZE(ev->payload) : 0;
}

static void
dt_event_log_write(DtEvent *batch, int nbatch)
{
	DtLogRows	rows;
	int			c;
	int			i;

	rows.n = 0;
	rows.bytes = 0;
	for (c = 0; c < DT_LOG_NCOLS; c++)
	{
		rows.cols[c] = palloc(sizeof(Datum) * nbatch);
		rows.nulls[c] = palloc0(sizeof(bool) * nbatch);
	}
	for (i = 0; i < nbatch; i++)
	{
		DtEvent    *ev = &batch[i];
		DtModel    *model;

		if (ev->dead)
			continue;
		model = dt_model_lookup(ev->model);
		if (model == NULL || !model->log_events)
			continue;
		dt_event_log_add(&rows, ev, model);
		/* arrays under the 1 GB a value may have */
		if (rows.bytes >= DT_FLUSH_BYTES)
			dt_event_log_execute(&rows);
	}
	dt_event_log_execute(&rows);
}

/* ----------------------------------------------------------------
 * State history
 * ----------------------------------------------------------------
 */
typedef struct DtHistoryRows
{
	int			n;
	int			size;
	Size		bytes;
	Datum	   *model_ids;
	Datum	   *models;
	Datum	   *twin_ids;
	Datum	   *states;
	bool	   *state_nulls;
	Datum	   *counts;
	Datum	   *times;
	HTAB	   *conversions;	/* DtToJsonb by model id */
} DtHistoryRows;

static void
dt_history_execute(DtHistoryRows *rows)
{
	Datum		args[6];
	int			ret;

	if (rows->n == 0)
		return;
	if (history_plan == NULL)
	{
		Oid			types[6] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		JSONBARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID};

		history_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.state_history "
										   "(model_id, model, twin_id, state, event_count, valid_from) "
										   "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										   "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
										   "pg_catalog.unnest($6))",
										   6, types);
	}
	args[0] = dt_make_array(rows->model_ids, NULL, rows->n, INT4OID);
	args[1] = dt_make_array(rows->models, NULL, rows->n, TEXTOID);
	args[2] = dt_make_array(rows->twin_ids, NULL, rows->n, TEXTOID);
	args[3] = dt_make_array(rows->states, rows->state_nulls, rows->n, JSONBOID);
	args[4] = dt_make_array(rows->counts, NULL, rows->n, INT8OID);
	args[5] = dt_make_array(rows->times, NULL, rows->n, TIMESTAMPTZOID);
	ret = SPI_execute_plan(history_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	rows->n = 0;
	rows->bytes = 0;
}

/*
 * The state as jsonb.  to_jsonb() of a state of another type runs the
 * type's output functions (as the live view does); it finds the type in
 * its call expression, one per model, made for the batch.
 */
typedef struct DtToJsonb
{
	int32		model_id;		/* hash key */
	FmgrInfo	flinfo;
} DtToJsonb;

static Jsonb *
dt_history_state(DtStagedTwin *twin, HTAB *conversions)
{
	DtModel    *model = twin->model;
	DtToJsonb  *conv;
	bool		found;
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
	Jsonb	   *result;

	if (model->is_jsonb)
		return DatumGetJsonbP(twin->state);
	conv = hash_search(conversions, &model->id, HASH_ENTER, &found);
	if (!found)
		dt_to_jsonb_fmgr(&conv->flinfo, model->state_type, CurrentMemoryContext);
	/* as its owner, as the live view converts states */
	guc_level = dt_become_model_owner(model->owner, model->search_path,
									  &save_userid, &save_sec_context);
	result = DatumGetJsonbP(FunctionCall1(&conv->flinfo, twin->state));
	dt_leave_model_owner(save_userid, save_sec_context, guc_level);
	return result;
}

static void
dt_history_add(DtStagedTwin *twin, void *arg)
{
	DtHistoryRows *rows = arg;
	int			i;

	if (!twin->model->keep_history)
		return;
	if (rows->n == rows->size)
	{
		rows->size *= 2;
		rows->model_ids = repalloc(rows->model_ids, sizeof(Datum) * rows->size);
		rows->models = repalloc(rows->models, sizeof(Datum) * rows->size);
		rows->twin_ids = repalloc(rows->twin_ids, sizeof(Datum) * rows->size);
		rows->states = repalloc(rows->states, sizeof(Datum) * rows->size);
		rows->state_nulls = repalloc(rows->state_nulls, sizeof(bool) * rows->size);
		rows->counts = repalloc(rows->counts, sizeof(Datum) * rows->size);
		rows->times = repalloc(rows->times, sizeof(Datum) * rows->size);
	}
	i = rows->n++;
	rows->model_ids[i] = Int32GetDatum(twin->model->id);
	rows->models[i] = CStringGetTextDatum(twin->model->name);
	rows->twin_ids[i] = CStringGetTextDatum(twin->twin_id);
	rows->state_nulls[i] = !twin->has_state;
	if (twin->has_state)
	{
		Jsonb	   *state = dt_history_state(twin, rows->conversions);

		rows->states[i] = JsonbPGetDatum(state);
		rows->bytes += VARSIZE(state);
	}
	rows->counts[i] = Int64GetDatum(twin->event_count);
	rows->times[i] = TimestampTzGetDatum(twin->updated_at);
	if (rows->bytes >= DT_FLUSH_BYTES)
		dt_history_execute(rows);
}

static void
dt_history_write_states(void *arg)
{
	DtHistoryRows rows;
	HASHCTL		ctl;

	rows.n = 0;
	rows.size = 64;
	rows.bytes = 0;
	rows.model_ids = palloc(sizeof(Datum) * rows.size);
	rows.models = palloc(sizeof(Datum) * rows.size);
	rows.twin_ids = palloc(sizeof(Datum) * rows.size);
	rows.states = palloc(sizeof(Datum) * rows.size);
	rows.state_nulls = palloc(sizeof(bool) * rows.size);
	rows.counts = palloc(sizeof(Datum) * rows.size);
	rows.times = palloc(sizeof(Datum) * rows.size);
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(DtToJsonb);
	ctl.hcxt = CurrentMemoryContext;
	rows.conversions = hash_create("digitaltwin history conversions", 8, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dt_stage_foreach_changed(dt_history_add, &rows);
	dt_history_execute(&rows);
}

/*
 * The batch's event log and history rows, in its transaction, after its
 * states were persisted.  Models that log nothing cost a look at two flags
 * per event and per changed twin.
 */
void
dt_history_write(DtEvent *batch, int nbatch)
{
	if (dt_models_logging == 0)
		return;
	dt_event_log_write(batch, nbatch);

	/*
	 * A state of another type than jsonb is converted by to_jsonb(), which
	 * may call a cast to json of the type's owner: whatever that does, the
	 * batch goes on (trust rule 3) and only its history is missing, with a
	 * WARNING; and it leaves nothing in the worker's session (rule 2).
	 */
	(void) dt_run_guarded(dt_history_write_states, NULL, NULL, WARNING,
						  "digitaltwin: the history of a batch was not written");
	dt_model_forget_session_state();
}
