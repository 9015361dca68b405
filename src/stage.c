/*-------------------------------------------------------------------------
 *
 * stage.c
 *	  Worker-local staging of twin states within one batch.
 *
 * Shared memory is not transactional, so a batch never writes it directly.
 * Each twin the batch touches is copied into a worker-local hash; models
 * read and replace the staged state; an undo log lets the worker forget the
 * effects of a run of events whose subtransaction failed.  At the end of the
 * batch the staged states are
 *	  1. written to digitaltwin.twin_state (same transaction as the deletion
 *		 of the consumed events: this is the exactly-once point),
 *	  2. copied into freshly allocated DSA chunks, and entries reserved for
 *		 new twins (still before commit, so running out of memory aborts the
 *		 batch and leaves its events queued),
 *	  3. installed in the shared hash after commit, an operation that cannot
 *		 fail, or abandoned after abort.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "dt_internal.h"

typedef struct DtUndo
{
	DtStagedTwin *twin;
	bool		has_state;
	Datum		state;
	int64		event_count;
	bool		dirty;
	bool		counted;
	TimestampTz updated_at;
} DtUndo;

static MemoryContext stage_cxt = NULL;
static int	stage_partition = 0;
static HTAB *staged = NULL;
static DtUndo *undo = NULL;
static int	nundo = 0;
static int	undo_size = 0;

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr delete_plan = NULL;

/* ----------------------------------------------------------------
 * State images: the flat bytes of a state datum, as kept in shared memory
 * and in twin_state.state.
 * ----------------------------------------------------------------
 */
Size
dt_state_image_size(Datum value, int16 typlen, bool typbyval)
{
	if (typbyval)
		return sizeof(Datum);
	if (typlen == -1)
		return VARSIZE(DatumGetPointer(value));
	if (typlen == -2)
		return strlen(DatumGetCString(value)) + 1;
	return typlen;
}

void
dt_state_image_write(char *dst, Datum value, int16 typlen, bool typbyval)
{
	if (typbyval)
		memcpy(dst, &value, sizeof(Datum));
	else
		memcpy(dst, DatumGetPointer(value),
			   dt_state_image_size(value, typlen, typbyval));
}

/* src must be MAXALIGNed and outlive the datum */
Datum
dt_state_image_read(const char *src, Size len, int16 typlen, bool typbyval)
{
	Datum		value;

	if (typbyval)
	{
		memcpy(&value, src, sizeof(Datum));
		return value;
	}
	return PointerGetDatum(src);
}

/*
 * A state a model returned, checked before it is staged: bounded in size
 * (digitaltwin.max_state_size), and for jsonb an object.
 */
void
dt_check_state(DtModel *model, Datum state)
{
	if (!model->typbyval && model->typlen == -1 &&
		toast_raw_datum_size(state) > (Size) dt_max_state_kb * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" returned a state of %zu bytes",
						model->name, toast_raw_datum_size(state)),
				 errdetail("digitaltwin.max_state_size is %d kB.", dt_max_state_kb)));
	if (model->is_jsonb)
	{
		Jsonb	   *j = DatumGetJsonbP(state);

		if (!JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("model \"%s\" returned a state that is not a JSON object",
							model->name),
					 errhint("Return a jsonb object, or NULL to end the twin.")));
	}
}

/*
 * A state as twin_state stores it (see dt_stage_persisted_value), in the
 * current memory context: for a varlena type the flat, detoasted value
 * with its 4-byte header; for other types the bytes of the value.
 */
bytea *
dt_state_to_bytea(Datum value, int16 typlen, bool typbyval)
{
	bytea	   *b;
	Size		len;

	if (!typbyval && typlen == -1)
	{
		struct varlena *v = (struct varlena *) DatumGetPointer(value);
		struct varlena *flat = detoast_attr(v);

		/* a copy of its own, whatever the value's memory becomes */
		if (flat == v)
		{
			flat = palloc(VARSIZE(v));
			memcpy(flat, v, VARSIZE(v));
		}
		return (bytea *) flat;
	}
	len = dt_state_image_size(value, typlen, typbyval);
	b = palloc(VARHDRSZ + len);
	SET_VARSIZE(b, VARHDRSZ + len);
	dt_state_image_write(VARDATA(b), value, typlen, typbyval);
	return b;
}

/*
 * Make a model's result a plain datum owned by the batch: detoasted (it may
 * point into a table), flattened (plpgsql may return expanded objects), with
 * a 4-byte header, so that its image is just its bytes.
 */
Datum
dt_stage_own_datum(Datum value, int16 typlen, bool typbyval)
{
	MemoryContext old = MemoryContextSwitchTo(stage_cxt);
	Datum		result;

	if (typbyval)
		result = value;
	else if (typlen == -1)
		result = PointerGetDatum(PG_DETOAST_DATUM_COPY(value));
	else
		result = datumCopy(value, typbyval, typlen);
	MemoryContextSwitchTo(old);
	return result;
}

/* ----------------------------------------------------------------
 * The staging hash and its undo log
 * ----------------------------------------------------------------
 */
void
dt_stage_begin(MemoryContext cxt, int partition)
{
	HASHCTL		ctl;

	stage_cxt = cxt;
	stage_partition = partition;
	ctl.keysize = sizeof(DtTwinKey);
	ctl.entrysize = sizeof(DtStagedTwin);
	ctl.hcxt = cxt;
	staged = hash_create("digitaltwin staged twins", 256, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	undo_size = 256;
	undo = MemoryContextAlloc(cxt, sizeof(DtUndo) * undo_size);
	nundo = 0;
}

DtStagedTwin *
dt_stage_get(DtModel *model, const char *twin_id)
{
	DtTwinKey	key;
	DtStagedTwin *twin;
	bool		found;
	char	   *image;
	Size		len;
	int64		count;

	dt_make_key(&key, model->id, twin_id, strlen(twin_id));
	twin = hash_search(staged, &key, HASH_ENTER, &found);
	if (found)
		return twin;

	twin->model = model;
	twin->twin_id = MemoryContextStrdup(stage_cxt, twin_id);
	twin->dirty = false;
	twin->new_image = InvalidDsaPointer;
	twin->new_len = 0;
	twin->reserved_slot = false;
	twin->image = NULL;
	twin->overwrite = false;
	/* published twins and rows of twin_state exist together */
	twin->durable = dt_store_fetch(&key, stage_cxt, &image, &len, &count);
	twin->shared_len = twin->durable ? len : 0;
	twin->counted = twin->counted_at_start = twin->durable;
	if (twin->durable)
	{
		twin->has_state = true;
		twin->state = dt_state_image_read(image, len, model->typlen, model->typbyval);
		twin->event_count = count;
	}
	else
	{
		twin->has_state = false;
		twin->state = (Datum) 0;
		twin->event_count = 0;
	}
	return twin;
}

void
dt_stage_save_undo(DtStagedTwin *twin)
{
	DtUndo	   *u;

	if (nundo == undo_size)
	{
		undo_size *= 2;
		undo = repalloc(undo, sizeof(DtUndo) * undo_size);
	}
	u = &undo[nundo++];
	u->twin = twin;
	u->has_state = twin->has_state;
	u->state = twin->state;
	u->event_count = twin->event_count;
	u->dirty = twin->dirty;
	u->counted = twin->counted;
	u->updated_at = twin->updated_at;
}

/*
 * A twin without a state is getting one: count it against its model's
 * limit, unless it holds a unit already (it existed before the batch, or
 * was created and ended in it).
 */
void
dt_stage_count_twin(DtStagedTwin *twin)
{
	if (twin->counted)
		return;
	if (!dt_twin_count_reserve(twin->model->id, stage_partition,
							   dt_shared->nworkers, dt_max_twins_per_model))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("model \"%s\" has reached digitaltwin.max_twins_per_model (%d twins)",
						twin->model->name, dt_max_twins_per_model),
				 errdetail("The event would have created twin \"%s\".", twin->twin_id),
				 errhint("Raise digitaltwin.max_twins_per_model, or end twins by returning NULL from the model.")));
	twin->counted = true;
}

int
dt_stage_undo_mark(void)
{
	return nundo;
}

void
dt_stage_undo_to(int mark)
{
	while (nundo > mark)
	{
		DtUndo	   *u = &undo[--nundo];
		DtStagedTwin *twin = u->twin;

		twin->has_state = u->has_state;
		twin->state = u->state;
		twin->event_count = u->event_count;
		twin->dirty = u->dirty;
		twin->updated_at = u->updated_at;
		if (twin->counted && !u->counted)
			dt_twin_count_add(twin->model->id, stage_partition, -1);
		twin->counted = u->counted;
	}
}

/* ----------------------------------------------------------------
 * End of batch
 * ----------------------------------------------------------------
 */

/*
 * The value written to twin_state.state.  A varlena state (jsonb, bytea, a
 * composite...) is written as itself, so that a bytea state reads back
 * unchanged from the table; any other type as the bytes of its image.
 * Either way twin->image/image_len is then the image kept in shared memory.
 */
static bytea *
dt_stage_persisted_value(DtStagedTwin *twin)
{
	DtModel    *m = twin->model;
	Size		len = dt_state_image_size(twin->state, m->typlen, m->typbyval);
	bytea	   *b;

	if (!m->typbyval && m->typlen == -1)
	{
		/* owned by the batch, detoasted, with a 4-byte header */
		b = (bytea *) DatumGetPointer(twin->state);
		twin->image = (char *) b;
		twin->image_len = len;
		return b;
	}
	b = MemoryContextAlloc(stage_cxt, VARHDRSZ + len);
	SET_VARSIZE(b, VARHDRSZ + len);
	dt_state_image_write(VARDATA(b), twin->state, m->typlen, m->typbyval);
	twin->image = VARDATA(b);
	twin->image_len = len;
	return b;
}

static void
dt_stage_prepare_plans(void)
{
	Oid			types[5] = {INT4ARRAYOID, TEXTARRAYOID, BYTEAARRAYOID,
	INT8ARRAYOID, TIMESTAMPTZARRAYOID};

	/*
	 * New twins are inserted and known ones updated (dt_stage_update_rows),
	 * rather than both upserted: ON CONFLICT DO UPDATE locks each row before
	 * updating it, one more WAL record per twin.
	 */
	if (insert_plan == NULL)
		insert_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.twin_state "
										  "(model_id, twin_id, state, event_count, updated_at) "
										  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										  "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))",
										  5, types);
	if (delete_plan == NULL)
	{
		Oid			del_types[2] = {INT4ARRAYOID, TEXTARRAYOID};

		delete_plan = dt_spi_prepare_kept("DELETE FROM digitaltwin.twin_state s "
										  "USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS d(model_id, twin_id) "
										  "WHERE s.model_id OPERATOR(pg_catalog.=) d.model_id "
										  "AND s.twin_id OPERATOR(pg_catalog.=) d.twin_id",
										  2, del_types);
	}
}

void
dt_stage_forget_plans(void)
{
	if (insert_plan)
		SPI_freeplan(insert_plan);
	if (delete_plan)
		SPI_freeplan(delete_plan);
	insert_plan = NULL;
	delete_plan = NULL;
}

/*
 * The changed twins of one kind, as the arrays a statement takes; flushed
 * every DT_FLUSH_BYTES of states.
 */
typedef struct DtStateRows
{
	int			n;
	Size		bytes;			/* of the states in the arrays */
	int			written;		/* rows written by the statements so far */
	Datum	   *ids;
	Datum	   *twin_ids;
	Datum	   *images;
	Datum	   *counts;
	Datum	   *times;
} DtStateRows;

static void
dt_rows_init(DtStateRows *rows, long size)
{
	rows->n = 0;
	rows->bytes = 0;
	rows->written = 0;
	rows->ids = palloc(sizeof(Datum) * Max(size, 1));
	rows->twin_ids = palloc(sizeof(Datum) * Max(size, 1));
	rows->images = palloc(sizeof(Datum) * Max(size, 1));
	rows->counts = palloc(sizeof(Datum) * Max(size, 1));
	rows->times = palloc(sizeof(Datum) * Max(size, 1));
}

static void
dt_rows_add(DtStateRows *rows, DtStagedTwin *twin, bool with_state)
{
	rows->ids[rows->n] = Int32GetDatum(twin->model->id);
	rows->twin_ids[rows->n] = CStringGetTextDatum(twin->twin_id);
	if (with_state)
	{
		rows->images[rows->n] = PointerGetDatum(dt_stage_persisted_value(twin));
		rows->bytes += VARSIZE(DatumGetPointer(rows->images[rows->n]));
		rows->counts[rows->n] = Int64GetDatum(twin->event_count);
		rows->times[rows->n] = TimestampTzGetDatum(twin->updated_at);
	}
	rows->n++;
}

static void
dt_rows_execute(DtStateRows *rows, SPIPlanPtr plan, int nargs, int expected_ret)
{
	Datum		args[5];
	int			ret;

	if (rows->n == 0)
		return;
	args[0] = PointerGetDatum(construct_array(rows->ids, rows->n, INT4OID, 4, true, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(rows->twin_ids, rows->n, TEXTOID, -1, false, TYPALIGN_INT));
	if (nargs == 5)
	{
		args[2] = PointerGetDatum(construct_array(rows->images, rows->n, BYTEAOID, -1, false, TYPALIGN_INT));
		args[3] = PointerGetDatum(construct_array(rows->counts, rows->n, INT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[4] = PointerGetDatum(construct_array(rows->times, rows->n, TIMESTAMPTZOID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	}
	ret = SPI_execute_plan(plan, args, NULL, false, 0);
	if (ret != expected_ret)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	/* twin_state and shared memory must agree on which twins exist */
	if (SPI_processed != (uint64) rows->n)
		elog(ERROR, "digitaltwin: wrote " UINT64_FORMAT " rows of twin_state for %d twins",
			 SPI_processed, rows->n);
	rows->written += rows->n;
	rows->n = 0;
	rows->bytes = 0;
}

/*
 * Update the rows of twins that twin_state has already, straight through
 * the table AM (dt_row_updater_open): the primary key finds each row, and
 * the new version is written as an UPDATE statement would.  This is what
 * that statement would do, without forming, materialising and joining
 * arrays of a whole batch's states (a quarter of the statement's cost).
 * No trigger needs to fire: the only one, the foreign key's check, is
 * skipped by PostgreSQL too when the key does not change.  This worker is
 * the only writer of its twins' rows; a row deleted meanwhile (its model
 * dropped) is an error, and the batch is retried.
 */
/*
 * Where each twin's row of twin_state was last written by this worker, so
 * that the next update finds it without a lookup by key (which cost a
 * third of the workers' time where the same twins change batch after
 * batch).  Only a hint: dt_row_updater_find_at() checks that a visible
 * row with the twin's key is there, and looks the key up otherwise (the
 * batch that wrote it rolled back, the row was deleted, vacuumed away or
 * moved by a rewrite).  Kept for one file of twin_state and bounded: full,
 * it starts again empty.
 */
#define DT_ROW_PLACES_MAX 131072

typedef struct DtRowPlace
{
	DtTwinKey	key;			/* hash key: must be first */
	ItemPointerData tid;
} DtRowPlace;

static HTAB *row_places = NULL;
static Oid	row_places_file = InvalidOid;

static DtRowPlace *
dt_row_place(Relation rel, const DtTwinKey *key)
{
	DtRowPlace *place;
	bool		found;

	if (row_places != NULL &&
		(row_places_file != rel->rd_node.relNode ||
		 hash_get_num_entries(row_places) >= DT_ROW_PLACES_MAX))
	{
		hash_destroy(row_places);
		row_places = NULL;
	}
	if (row_places == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(DtTwinKey);
		ctl.entrysize = sizeof(DtRowPlace);
		row_places = hash_create("digitaltwin rows of twins", 1024, &ctl,
								 HASH_ELEM | HASH_BLOBS);
		row_places_file = rel->rd_node.relNode;
	}
	place = hash_search(row_places, key, HASH_ENTER, &found);
	if (!found)
		ItemPointerSetInvalid(&place->tid);
	return place;
}

static void
dt_stage_update_rows(DtStagedTwin **twins, int n)
{
	DtRowUpdater u;
	ScanKeyData keys[2];
	int			i;

	if (n == 0)
		return;
	dt_row_updater_open(&u, dt_extension_relid("twin_state"), GetActiveSnapshot());
	for (i = 0; i < n; i++)
	{
		DtStagedTwin *twin = twins[i];
		TupleTableSlot *newslot = u.newslot;
		DtRowPlace *place = dt_row_place(u.find.rel, &twin->key);

		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ,
					Int32GetDatum(twin->model->id));
		ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
							   u.find.index->rd_indcollation[1], F_TEXTEQ,
							   CStringGetTextDatum(twin->twin_id));
		if (!dt_row_updater_find_at(&u, &place->tid, keys))
			elog(ERROR, "digitaltwin: twin \"%s\" of model \"%s\" is missing from twin_state",
				 twin->twin_id, twin->model->name);
		newslot->tts_values[2] = PointerGetDatum(dt_stage_persisted_value(twin));
		newslot->tts_values[3] = Int64GetDatum(twin->event_count);
		newslot->tts_values[4] = TimestampTzGetDatum(twin->updated_at);
		if (!dt_row_updater_write(&u))
			elog(ERROR, "digitaltwin: the row of twin \"%s\" of model \"%s\" in twin_state changed concurrently",
				 twin->twin_id, twin->model->name);
		place->tid = newslot->tts_tid;
	}
	dt_row_updater_close(&u);
}

/*
 * Write every changed twin to digitaltwin.twin_state: updates directly,
 * inserts and deletes with one statement each (an insert must check the
 * foreign key to its model).  Returns the number of changed twins.  Runs inside
 * SPI, in the batch's transaction.
 */
int
dt_stage_persist(void)
{
	long		n = hash_get_num_entries(staged);
	DtStateRows inserts;
	DtStateRows deletes;
	DtStagedTwin **updates = palloc(sizeof(DtStagedTwin *) * Max(n, 1));
	int			nupdates = 0;
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	dt_stage_prepare_plans();
	dt_rows_init(&inserts, n);
	dt_rows_init(&deletes, n);
	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		if (!twin->dirty)
			continue;
		if (twin->has_state && twin->durable)
			updates[nupdates++] = twin;
		else if (twin->has_state)
		{
			dt_rows_add(&inserts, twin, true);
			if (inserts.bytes >= DT_FLUSH_BYTES)
				dt_rows_execute(&inserts, insert_plan, 5, SPI_OK_INSERT);
		}
		else if (twin->durable)
			dt_rows_add(&deletes, twin, false);
	}
	dt_stage_update_rows(updates, nupdates);
	dt_rows_execute(&inserts, insert_plan, 5, SPI_OK_INSERT);
	dt_rows_execute(&deletes, delete_plan, 2, SPI_OK_DELETE);
	return inserts.written + nupdates + deletes.written;
}

/*
 * Call fn for each twin the batch changed (a new or changed state, or an
 * ended twin that had one), with its final state.
 */
void
dt_stage_foreach_changed(void (*fn) (DtStagedTwin *twin, void *arg), void *arg)
{
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		if (twin->dirty && (twin->has_state || twin->durable))
			fn(twin, arg);
	}
}

/*
 * Before commit: copy each new state into shared memory (not yet visible)
 * and have a slot of the shared table promised to it, so that publishing
 * after commit needs no memory.  May ERROR when memory is exhausted;
 * dt_stage_abandon() then gives everything back.
 */
void
dt_stage_prepare_publish(void)
{
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	dt_store_quota_begin();
	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		if (!twin->dirty || !twin->has_state)
			continue;
		twin->new_len = twin->image_len;
		/* same length: rewritten in place after commit, no memory needed */
		if (twin->durable && twin->shared_len == twin->new_len)
		{
			twin->overwrite = true;
			continue;
		}
		dt_store_quota_check(twin->durable ?
							 (int64) twin->new_len - (int64) twin->shared_len :
							 (int64) (twin->new_len + dt_store_twin_overhead(strlen(twin->key.twin_id))));
		twin->new_image = dt_store_alloc_entry(&twin->key, twin->image, twin->new_len);
		dt_store_reserve_entry(&twin->key);
		twin->reserved_slot = true;
	}
}

/*
 * After commit: make the batch's states visible.  Cannot fail.
 */
void
dt_stage_publish(DtWorkerSlot *slot)
{
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		dsa_pointer entry = twin->new_image;

		if (!twin->dirty)
			continue;

		/*
		 * Forgotten before it is used: if what follows fails, the abandon
		 * of the recovery must neither free a linked entry nor give its
		 * promise back a second time.
		 */
		twin->new_image = InvalidDsaPointer;
		twin->reserved_slot = false;
		if (twin->overwrite)
			dt_store_overwrite(&twin->key, twin->image, twin->new_len,
							   (uint16) twin->model->state_version,
							   twin->event_count, twin->updated_at);
		else if (DsaPointerIsValid(entry))
			dt_store_install(entry, (uint16) twin->model->state_version,
							 twin->event_count, twin->updated_at, slot);
		else
			dt_store_remove(&twin->key, slot);
		if (twin->counted && !twin->has_state)
		{
			twin->counted = false;
			dt_twin_count_add(twin->model->id, stage_partition, -1);
		}
	}
	staged = NULL;
}

/*
 * After abort: give back what dt_stage_prepare_publish() took.
 */
void
dt_stage_abandon(void)
{
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	if (staged == NULL)
		return;
	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		dsa_pointer entry = twin->new_image;
		bool		reserved = twin->reserved_slot;
		bool		uncount = twin->counted && !twin->counted_at_start;

		/* forgotten first: a failure below must not make a second abandon repeat it */
		twin->new_image = InvalidDsaPointer;
		twin->reserved_slot = false;
		twin->counted = twin->counted_at_start;
		if (DsaPointerIsValid(entry))
			dsa_free(dt_area, entry);
		if (reserved)
			dt_store_unreserve(&twin->key);
		if (uncount)
			dt_twin_count_add(twin->model->id, stage_partition, -1);
	}
	staged = NULL;
}
