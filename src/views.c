/*-------------------------------------------------------------------------
 *
 * views.c
 *	  Set-returning functions behind the live views digitaltwin.twins and
 *	  digitaltwin.stats.
 *
 * twin_entries() reads the published twins while holding only the shared
 * lock of one partition of the hash at a time.  A jsonb state is put in the
 * result right there: that only forms a tuple (and past work_mem writes it
 * to a temporary file), no user code runs, and it saves copying a million
 * states twice.  Any other state type is copied out and converted to jsonb
 * after every lock is released: to_jsonb() calls type output functions,
 * which must not run under an LWLock.
 *
 * Shared memory holds a worker's twins only once that worker has loaded
 * them from digitaltwin.twin_state.  Until then (on a hot standby, where
 * workers never run; after a restart or a promotion, while the workers load;
 * after the extension was re-created) the twins of that worker's partition
 * are read from twin_state, which is exactly their committed state since
 * the worker has processed nothing yet.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/tuplestore.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_twin_entries);
PG_FUNCTION_INFO_V1(digitaltwin_worker_stats);

typedef struct DtViewModel
{
	int32		id;				/* hash key */
	Oid			state_type;
	int16		typlen;
	bool		typbyval;
	FmgrInfo	to_jsonb;
} DtViewModel;

typedef struct DtTwinCopy
{
	int32		model_id;
	char	   *twin_id;
	char	   *image;
	Size		len;
	int64		event_count;
	TimestampTz updated_at;
} DtTwinCopy;

/*
 * A state as jsonb: jsonb states as they are, any other type through
 * to_jsonb(), which finds the argument type in its call expression.
 */
static Jsonb *
dt_view_state_jsonb(DtViewModel *m, Datum value)
{
	if (m->state_type == JSONBOID)
		return DatumGetJsonbP(value);
	return DatumGetJsonbP(FunctionCall1(&m->to_jsonb, value));
}

static HTAB *
dt_view_models(void)
{
	HASHCTL		ctl;
	HTAB	   *models;
	uint64		i;
	int			ret;

	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(DtViewModel);
	ctl.hcxt = CurrentMemoryContext;
	models = hash_create("digitaltwin view models", 16, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	SPI_connect();
	ret = SPI_execute("SELECT id, state_type::oid FROM digitaltwin.models", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
		DtViewModel *m = hash_search(models, &id, HASH_ENTER, NULL);

		m->state_type = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 2, &isnull));
		get_typlenbyval(m->state_type, &m->typlen, &m->typbyval);
		if (m->state_type != JSONBOID)
		{
			fmgr_info_cxt(F_TO_JSONB, &m->to_jsonb, ctl.hcxt);
			m->to_jsonb.fn_expr = (Node *)
				makeFuncExpr(F_TO_JSONB, JSONBOID,
							 list_make1(makeNullConst(m->state_type, -1, InvalidOid)),
							 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		}
	}
	SPI_finish();
	return models;
}

static DtTwinCopy *
dt_view_add_copy(DtTwinCopy **copies, int64 *ncopies, int64 *size)
{
	if (*ncopies == *size)
	{
		*size *= 2;
		*copies = repalloc_huge(*copies, sizeof(DtTwinCopy) * *size);
	}
	return &(*copies)[(*ncopies)++];
}

typedef struct DtDurableCopies
{
	const bool *current;
	int			nparts;
	MemoryContext cxt;
	DtTwinCopy **copies;
	int64		ncopies;
	int64	   *size;
} DtDurableCopies;

static void
dt_view_copy_one(void *arg, int32 model_id, const char *twin_id, int idlen,
				 const char *image, Size len, int64 event_count,
				 TimestampTz updated_at)
{
	DtDurableCopies *d = arg;
	MemoryContext old;
	DtTwinCopy *c;

	if (d->current[dt_partition_of(twin_id, idlen, d->nparts)])
		return;
	/* in the caller's context, to outlive the scan's SPI connection */
	old = MemoryContextSwitchTo(d->cxt);
	c = dt_view_add_copy(d->copies, &d->ncopies, d->size);
	c->model_id = model_id;
	c->twin_id = pnstrdup(twin_id, idlen);
	c->len = len;
	c->image = palloc(len);		/* MAXALIGNed */
	memcpy(c->image, image, len);
	c->event_count = event_count;
	c->updated_at = updated_at;
	MemoryContextSwitchTo(old);
}

/*
 * Copy the durable state of the twins of the partitions not current[] into
 * *copies; returns how many.
 */
static int64
dt_view_copy_durable(const bool *current, int nparts, DtTwinCopy **copies,
					 int64 *size)
{
	DtDurableCopies d;

	d.current = current;
	d.nparts = nparts;
	d.cxt = CurrentMemoryContext;
	d.copies = copies;
	d.ncopies = 0;
	d.size = size;
	dt_durable_scan(-1, nparts, dt_view_copy_one, &d);
	return d.ncopies;
}

Datum
digitaltwin_twin_entries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HTAB	   *models;
	DtTwinCopy *copies;
	int64		ncopies = 0;
	int64		size = 1024;
	dshash_seq_status status;
	DtTwinEntry *entry;
	int64		i;
	Oid			extension = dt_extension_oid();
	DtViewModel *m = NULL;
	union
	{
		struct varlena hdr;
		char		data[VARHDRSZ + DT_TWIN_ID_MAXLEN + 1];
		int32		align;
	}			idbuf;
	int			nparts;
	bool		current[DT_MAX_WORKERS];
	bool		all_current = true;

	dt_require_preload();
	nparts = Max(dt_shared->nworkers, 1);
	InitMaterializedSRF(fcinfo, 0);
	(void) dt_models_relid();	/* clear error if not installed */
	dt_attach_store();
	models = dt_view_models();

	/*
	 * Partitions whose worker has not loaded them for this extension come
	 * from twin_state; their shared-memory entries, if any, are stale (after
	 * DROP and CREATE EXTENSION, model ids start over) and are skipped.
	 */
	copies = palloc(sizeof(DtTwinCopy) * size);
	for (i = 0; i < nparts; i++)
	{
		SpinLockAcquire(&dt_shared->slots[i].mutex);
		current[i] = (dt_shared->slots[i].store_extension == extension) &&
			!RecoveryInProgress();
		SpinLockRelease(&dt_shared->slots[i].mutex);
		all_current &= current[i];
	}
	if (!all_current)
		ncopies = dt_view_copy_durable(current, nparts, &copies, &size);

	dshash_seq_init(&status, dt_twins, false);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		DtTwinCopy *c;
		const char *twin_id;
		Size		idlen;

		if (entry->pending || !DsaPointerIsValid(entry->state))
			continue;
		twin_id = dt_entry_twin_id(entry);
		idlen = entry->key.id_len;
		if (!all_current &&
			!current[dt_partition_of(twin_id, idlen, nparts)])
			continue;
		if (m == NULL || m->id != entry->key.model_id)
			m = hash_search(models, &entry->key.model_id, HASH_FIND, NULL);
		/* a model dropped after the workers last looked */
		if (m == NULL)
			continue;
		if (m->state_type == JSONBOID)
		{
			Datum		values[5];
			bool		nulls[5] = {false, false, false, false, false};

			SET_VARSIZE(&idbuf, VARHDRSZ + idlen);
			memcpy(VARDATA(&idbuf), twin_id, idlen);
			values[0] = Int32GetDatum(entry->key.model_id);
			values[1] = PointerGetDatum(&idbuf);
			values[2] = PointerGetDatum(dsa_get_address(dt_area, entry->state));
			values[3] = Int64GetDatum(entry->event_count);
			values[4] = TimestampTzGetDatum(entry->updated_at);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			continue;
		}
		c = dt_view_add_copy(&copies, &ncopies, &size);
		c->model_id = entry->key.model_id;
		c->twin_id = pnstrdup(twin_id, idlen);
		c->len = entry->state_len;
		c->image = palloc(entry->state_len);
		memcpy(c->image, dsa_get_address(dt_area, entry->state), entry->state_len);
		c->event_count = entry->event_count;
		c->updated_at = entry->updated_at;
	}
	dshash_seq_term(&status);

	for (i = 0; i < ncopies; i++)
	{
		DtTwinCopy *c = &copies[i];
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		m = hash_search(models, &c->model_id, HASH_FIND, NULL);
		if (m == NULL)
			continue;
		values[0] = Int32GetDatum(c->model_id);
		values[1] = CStringGetTextDatum(c->twin_id);
		values[2] = JsonbPGetDatum(dt_view_state_jsonb(m,
													   dt_state_image_read(c->image, c->len,
																		   m->typlen, m->typbyval)));
		values[3] = Int64GetDatum(c->event_count);
		values[4] = TimestampTzGetDatum(c->updated_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

Datum
digitaltwin_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	dt_require_preload();
	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &dt_shared->slots[i];
		Datum		values[11];
		bool		nulls[11];
		pid_t		pid;
		double		rate;
		int64		twins;
		int64		bytes;
		TimestampTz last_batch_at;
		TimestampTz window_start;
		char		last_error[sizeof(slot->last_error)];

		SpinLockAcquire(&slot->mutex);
		pid = slot->pid;
		rate = slot->events_per_second;
		twins = slot->twins;
		bytes = slot->memory_bytes;
		last_batch_at = slot->last_batch_at;
		window_start = slot->window_start;
		memcpy(last_error, slot->last_error, sizeof(last_error));
		SpinLockRelease(&slot->mutex);

		/* a rate measured long ago says nothing about now */
		if (window_start == 0 || TimestampDifferenceExceeds(window_start, now, 5000))
			rate = 0;

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (pid == 0);
		values[2] = Int64GetDatum(pg_atomic_read_u64(&slot->events_processed));
		values[3] = Float8GetDatum(rate);
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->dead_letters));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->alerts));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		values[7] = Int64GetDatum(twins);
		values[8] = Int64GetDatum(bytes);
		values[9] = TimestampTzGetDatum(last_batch_at);
		nulls[9] = (last_batch_at == 0);
		values[10] = CStringGetTextDatum(last_error);
		nulls[10] = (last_error[0] == '\0');
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
