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

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "dt_internal.h"

typedef struct DtUndo
{
	DtStagedTwin *twin;
	bool		has_state;
	Datum		state;
	int64		event_count;
	bool		dirty;
	TimestampTz updated_at;
} DtUndo;

static MemoryContext stage_cxt = NULL;
static HTAB *staged = NULL;
static DtUndo *undo = NULL;
static int	nundo = 0;
static int	undo_size = 0;

static SPIPlanPtr upsert_plan = NULL;
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
dt_stage_begin(MemoryContext cxt)
{
	HASHCTL		ctl;

	stage_cxt = cxt;
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
	twin->inserted_entry = false;
	twin->image = NULL;
	if (dt_store_fetch(&key, stage_cxt, &image, &len, &count))
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
	u->updated_at = twin->updated_at;
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
	if (upsert_plan == NULL)
	{
		Oid			types[5] = {INT4ARRAYOID, TEXTARRAYOID, BYTEAARRAYOID,
		INT8ARRAYOID, TIMESTAMPTZARRAYOID};

		upsert_plan = dt_spi_prepare_kept("INSERT INTO digitaltwin.twin_state AS s "
										  "(model_id, twin_id, state, event_count, updated_at) "
										  "SELECT * FROM unnest($1, $2, $3, $4, $5) "
										  "ON CONFLICT (model_id, twin_id) DO UPDATE "
										  "SET state = excluded.state, event_count = excluded.event_count, "
										  "updated_at = excluded.updated_at",
										  5, types);
	}
	if (delete_plan == NULL)
	{
		Oid			types[2] = {INT4ARRAYOID, TEXTARRAYOID};

		delete_plan = dt_spi_prepare_kept("DELETE FROM digitaltwin.twin_state s "
										  "USING unnest($1, $2) AS d(model_id, twin_id) "
										  "WHERE s.model_id = d.model_id AND s.twin_id = d.twin_id",
										  2, types);
	}
}

void
dt_stage_forget_plans(void)
{
	if (upsert_plan)
		SPI_freeplan(upsert_plan);
	if (delete_plan)
		SPI_freeplan(delete_plan);
	upsert_plan = NULL;
	delete_plan = NULL;
}

/*
 * Write every changed twin to digitaltwin.twin_state with two statements.
 * Returns the number of changed twins.  Runs inside SPI, in the batch's
 * transaction.
 */
int
dt_stage_persist(void)
{
	long		n = hash_get_num_entries(staged);
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *twin_ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *images = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *counts = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *times = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *del_ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *del_twin_ids = palloc(sizeof(Datum) * Max(n, 1));
	int			nup = 0;
	int			ndel = 0;
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;
	int			ret;

	dt_stage_prepare_plans();
	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		if (!twin->dirty)
			continue;
		if (twin->has_state)
		{
			images[nup] = PointerGetDatum(dt_stage_persisted_value(twin));
			ids[nup] = Int32GetDatum(twin->model->id);
			twin_ids[nup] = CStringGetTextDatum(twin->twin_id);
			counts[nup] = Int64GetDatum(twin->event_count);
			times[nup] = TimestampTzGetDatum(twin->updated_at);
			nup++;
		}
		else
		{
			del_ids[ndel] = Int32GetDatum(twin->model->id);
			del_twin_ids[ndel] = CStringGetTextDatum(twin->twin_id);
			ndel++;
		}
	}

	if (nup > 0)
	{
		Datum		args[5];

		args[0] = PointerGetDatum(construct_array(ids, nup, INT4OID, 4, true, TYPALIGN_INT));
		args[1] = PointerGetDatum(construct_array(twin_ids, nup, TEXTOID, -1, false, TYPALIGN_INT));
		args[2] = PointerGetDatum(construct_array(images, nup, BYTEAOID, -1, false, TYPALIGN_INT));
		args[3] = PointerGetDatum(construct_array(counts, nup, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[4] = PointerGetDatum(construct_array(times, nup, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		ret = SPI_execute_plan(upsert_plan, args, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	}
	if (ndel > 0)
	{
		Datum		args[2];

		args[0] = PointerGetDatum(construct_array(del_ids, ndel, INT4OID, 4, true, TYPALIGN_INT));
		args[1] = PointerGetDatum(construct_array(del_twin_ids, ndel, TEXTOID, -1, false, TYPALIGN_INT));
		ret = SPI_execute_plan(delete_plan, args, NULL, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	}
	return nup + ndel;
}

/*
 * Before commit: copy each new state into shared memory (not yet visible)
 * and reserve entries for new twins.  May ERROR when memory is exhausted;
 * dt_stage_abandon() then gives everything back.
 */
void
dt_stage_prepare_publish(void)
{
	HASH_SEQ_STATUS status;
	DtStagedTwin *twin;

	hash_seq_init(&status, staged);
	while ((twin = hash_seq_search(&status)) != NULL)
	{
		if (!twin->dirty || !twin->has_state)
			continue;
		twin->new_len = twin->image_len;
		twin->new_image = dt_store_alloc_image(twin->image, twin->new_len);
		twin->inserted_entry = dt_store_reserve_entry(&twin->key);
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
		if (!twin->dirty)
			continue;
		if (DsaPointerIsValid(twin->new_image))
			dt_store_install(&twin->key, twin->new_image, twin->new_len,
							 twin->event_count, twin->updated_at, slot);
		else
			dt_store_remove(&twin->key, slot);
		twin->new_image = InvalidDsaPointer;
		twin->inserted_entry = false;
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
		if (DsaPointerIsValid(twin->new_image))
			dsa_free(dt_area, twin->new_image);
		if (twin->inserted_entry)
			dt_store_unreserve(&twin->key);
		twin->new_image = InvalidDsaPointer;
		twin->inserted_entry = false;
	}
	staged = NULL;
}
