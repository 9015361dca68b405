/*-------------------------------------------------------------------------
 *
 * durable.c
 *	  Reading digitaltwin.twin_state, the durable copy of every twin's
 *	  state: into a worker's shared memory when it starts, and for the live
 *	  view while a worker has not loaded its twins yet.
 *
 * Two readers of the same rows.  dt_durable_scan() is a query (SPI), for
 * readers and for one model's twins in a stable order (a migration).
 * dt_durable_load() is what a worker runs when it (re)builds its partition
 * of the shared hash: it reads twin_state's pages itself, with the batch's
 * snapshot, and decides whether a row belongs to its partition from the
 * twin id before anything else, so that the rows of the other workers'
 * partitions cost a hash of their id and nothing more.  Every worker reads
 * every page at start (the partition of a twin is not where its row is), so
 * what each pays for the others' rows is what decides how long a restart
 * takes; with the query, each row went through the executor, a function
 * call for its partition and a join to the models in every worker.
 *
 * Both hand each state to dt_durable_deliver(), which turns it into the
 * image shared memory keeps (a composite state restored by pg_dump gets
 * its type's current OID there).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"

#include "dt_internal.h"

/*
 * The row type that durable states of a composite state type (or of a
 * domain over one) are read as, looked up once per state type of a scan.
 */
typedef struct DtRowType
{
	Oid			type;			/* the model's state type */
	Oid			rowtype;		/* its composite base type, else invalid */
	int			natts;
#ifdef VersionedDatumOffsetNumber
	XLogRecPtr	version;		/* of the row type's last change */
#endif
} DtRowType;

static void
dt_rowtype_lookup(DtRowType *rt, Oid type)
{
	Oid			base = getBaseType(type);

	rt->type = type;
	rt->rowtype = InvalidOid;
	if (get_typtype(base) == TYPTYPE_COMPOSITE)
	{
		TupleDesc	rowdesc = lookup_rowtype_tupdesc(base, -1);

		rt->rowtype = base;
		rt->natts = rowdesc->natts;
#ifdef VersionedDatumOffsetNumber
		rt->version = TupleDescGetVersion(rowdesc);
#endif
		ReleaseTupleDesc(rowdesc);
	}
}

/*
 * A composite state image as its model's current row type: written for
 * another OID of the type, it was restored (pg_dump) and gets the type's
 * OID.  On a server that versions row types (the datum carries the LSN of
 * its type's last change; an older one is refused as outdated), a version
 * newer than the type's own cannot come from this server either: restored,
 * the OID being the same by chance.  An older version with the same OID is
 * left alone: on this server that is a state whose type was altered under
 * it, which must fail, not be relabelled.  Returns the image to use: the
 * value itself, or a relabelled copy (SPI's tuple stays intact).
 */
static bytea *
dt_relabel_restored_row(bytea *value, Datum state, const DtRowType *rt,
						text *twin_id)
{
	HeapTupleHeader td = (HeapTupleHeader) value;
	bool		foreign;

	if (VARSIZE(value) < SizeofHeapTupleHeader)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("durable state of twin \"%s\" is not a row of type %s",
						text_to_cstring(twin_id), format_type_be(rt->rowtype)),
				 errhint("Repair or delete the row of digitaltwin.twin_state.")));
	foreign = HeapTupleHeaderGetTypeId(td) != rt->rowtype;
#ifdef VersionedDatumOffsetNumber
	if (!foreign && HeapTupleHeaderIsVersionedDatum(td) &&
		!XLogRecPtrIsInvalid(rt->version) &&
		HeapTupleHeaderGetVersion(td) > rt->version)
		foreign = true;
#endif
	if (!foreign)
		return value;

	/*
	 * pg_dump recreates a type without its dropped attributes: a row with
	 * more attributes than the type has now would be read at the wrong
	 * offsets.  Refused, as no state can be made of it.
	 */
	if (HeapTupleHeaderGetNatts(td) > rt->natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("durable state of twin \"%s\" has %d attributes, its type %s has %d",
						text_to_cstring(twin_id), HeapTupleHeaderGetNatts(td),
						format_type_be(rt->rowtype), rt->natts),
				 errdetail("The state was written for a version of the type with dropped attributes, which a logical restore does not recreate."),
				 errhint("Restore from a physical backup, or drop the model with digitaltwin.drop_model() and create it again.")));

	if ((Pointer) value == DatumGetPointer(state))
	{
		value = palloc(VARSIZE(td));
		memcpy(value, td, VARSIZE(td));
	}
	td = (HeapTupleHeader) value;
	HeapTupleHeaderSetTypeId(td, rt->rowtype);
#ifdef VersionedDatumOffsetNumber
	HeapTupleHeaderSetDatum(td);
	if (!XLogRecPtrIsInvalid(rt->version))
		HeapTupleHeaderSetVersion(td, rt->version);
	else
	{
		HeapTupleHeaderSetTypMod(td, -1);
		ItemPointerSetInvalid(&td->t_ctid);
	}
#else
	HeapTupleHeaderSetTypMod(td, -1);
#endif
	return value;
}

/* what a scan of twin_state passes to dt_durable_deliver() */
typedef struct DtDurableScan
{
	dt_durable_fn fn;
	void	   *arg;
	DtRowType	rt;
} DtDurableScan;

/*
 * Hand one durable state to the scan's callback.  'varlena' says whether
 * the model's state type is a varlena one, 'rowtype' is the state type if
 * it is a composite or a domain (InvalidOid otherwise).
 */
static void
dt_durable_deliver(DtDurableScan *scan, int32 model_id, text *twin_id,
				   Datum state, int64 event_count, TimestampTz updated_at,
				   bool varlena, Oid rowtype)
{
	bytea	   *value;

	/* a varlena state's image is the whole value, 4-byte header included */
	if (varlena)
	{
		value = DatumGetByteaP(state);
		if (OidIsValid(rowtype))
		{
			if (rowtype != scan->rt.type)
				dt_rowtype_lookup(&scan->rt, rowtype);
			if (OidIsValid(scan->rt.rowtype))
				value = dt_relabel_restored_row(value, state, &scan->rt, twin_id);
		}
		scan->fn(scan->arg, model_id, VARDATA_ANY(twin_id), VARSIZE_ANY_EXHDR(twin_id),
				 (char *) value, VARSIZE(value), event_count, updated_at);
		/* a detoasted or relabelled copy: one at a time, not a million */
		if ((Pointer) value != DatumGetPointer(state))
			pfree(value);
	}
	else
	{
		value = DatumGetByteaPP(state);
		scan->fn(scan->arg, model_id, VARDATA_ANY(twin_id), VARSIZE_ANY_EXHDR(twin_id),
				 VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value), event_count, updated_at);
		if ((Pointer) value != DatumGetPointer(state))
			pfree(value);
	}
}

static void
dt_durable_row(HeapTuple tup, TupleDesc desc, void *arg)
{
	bool		isnull;
	Datum		rowtype = SPI_getbinval(tup, desc, 7, &isnull);
	Oid			rowtype_oid = isnull ? InvalidOid : DatumGetObjectId(rowtype);

	dt_durable_deliver(arg,
					   DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
					   DatumGetTextPP(SPI_getbinval(tup, desc, 2, &isnull)),
					   SPI_getbinval(tup, desc, 3, &isnull),
					   DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull)),
					   DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull)),
					   DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull)),
					   rowtype_oid);
}

/*
 * Read the durable states of twin_state, optionally restricted to the twins
 * of one worker partition (partition >= 0), and call fn for each with the
 * state's image (see dt_stage_persisted_value).  The image is valid only
 * during the call, and not necessarily MAXALIGNed.  Runs its own SPI
 * connection; fn runs inside it.
 *
 * The image of a composite state (or of a domain over a composite type) is
 * a HeapTupleHeader, which names its row type by OID.  After a logical
 * restore (pg_dump, pg_restore into another database) the type has another
 * OID, while twin_state holds the old one: the image is given the model's
 * current row type here (dt_relabel_restored_row), where every durable
 * state enters the workers and the live view.  OIDs deeper inside a value
 * (a nested composite, an array or range of a user-defined type, an enum)
 * are not rewritten: README, "Backup and restore".
 *
 * The query runs in workers and for readers alike: every name and operator
 * in it is schema-qualified, whatever the search_path.
 */
void
dt_durable_scan(int partition, int partitions, int32 model_id,
				dt_durable_fn fn, void *arg)
{
	Oid			types[3] = {INT4OID, INT4OID, INT4OID};
	Datum		args[3];
	DtDurableScan scan;

	scan.fn = fn;
	scan.arg = arg;
	memset(&scan.rt, 0, sizeof(scan.rt));	/* no type looked up yet */
	args[0] = Int32GetDatum(partitions);
	args[1] = Int32GetDatum(partition);
	args[2] = Int32GetDatum(model_id);
	SPI_connect();
	dt_spi_cursor_each(SPI_cursor_open_with_args(NULL,
												 "SELECT s.model_id, s.twin_id, s.state, s.event_count, s.updated_at, "
												 "       t.typlen OPERATOR(pg_catalog.=) -1 AND NOT t.typbyval, "
												 "       CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'c' "
												 "              OR t.typtype OPERATOR(pg_catalog.=) 'd' "
												 "            THEN t.oid END "
												 "FROM digitaltwin.twin_state s "
												 "JOIN digitaltwin.models m ON m.id OPERATOR(pg_catalog.=) s.model_id "
												 "JOIN pg_catalog.pg_type t "
												 "  ON t.oid OPERATOR(pg_catalog.=) m.state_type::pg_catalog.oid "
												 "WHERE ($2 OPERATOR(pg_catalog.<) 0 "
												 "   OR digitaltwin.partition_of(s.twin_id, $1) OPERATOR(pg_catalog.=) $2) "
												 "AND ($3 OPERATOR(pg_catalog.=) 0 OR s.model_id OPERATOR(pg_catalog.=) $3) "
												 /* one model's twins (a migration): in a stable order */
												 "ORDER BY CASE WHEN $3 OPERATOR(pg_catalog.<>) 0 THEN s.twin_id END",
												 3, types, args, NULL, true, 0),
					   dt_durable_row, &scan);
	SPI_finish();
}

/* ----------------------------------------------------------------
 * A worker's partition, page by page
 * ----------------------------------------------------------------
 */

/* twin_state's columns, in the order the extension creates them */
#define DT_STATE_ATT_MODEL_ID		1
#define DT_STATE_ATT_TWIN_ID		2
#define DT_STATE_ATT_STATE			3
#define DT_STATE_ATT_EVENT_COUNT	4
#define DT_STATE_ATT_UPDATED_AT		5
#define DT_STATE_NATTS				5

static const Oid dt_state_att_types[DT_STATE_NATTS] = {
	INT4OID, TEXTOID, BYTEAOID, INT8OID, TIMESTAMPTZOID
};

/*
 * twin_state as the extension created it: a plain heap table with its five
 * columns.  Anything else (a column added or dropped by a superuser, the
 * table created with another access method because default_table_access_method
 * said so, or moved to one) is read by the query, which reads any table
 * by column names.
 */
static bool
dt_durable_shape_known(Relation rel)
{
	return rel->rd_rel->relkind == RELKIND_RELATION &&
		rel->rd_rel->relam == HEAP_TABLE_AM_OID &&
		dt_columns_are(RelationGetDescr(rel), dt_state_att_types, DT_STATE_NATTS);
}

/*
 * A model's state type as dt_durable_deliver() needs it: what the query
 * joins from digitaltwin.models and pg_type, here from the worker's model
 * cache.  The cache is read just before with a snapshot of its own, not the
 * rows': the batch's ROW SHARE lock on the registry keeps out the switches
 * that change a model's state type or version (lifecycle.c), and a model
 * created or dropped in between has no rows here, or rows that its drop
 * deletes and the next batch forgets.
 */
typedef struct DtLoadModel
{
	int32		model_id;		/* 0: none looked up yet */
	bool		known;			/* a row of a model the registry lacks is
								 * skipped, as the query's join does */
	bool		varlena;
	Oid			rowtype;		/* the state type if composite or a domain */
} DtLoadModel;

static void
dt_load_model_lookup(DtLoadModel *lm, int32 model_id)
{
	DtModel    *model = dt_model_lookup_id(model_id);
	char		typtype;

	lm->model_id = model_id;
	lm->known = (model != NULL);
	lm->varlena = false;
	lm->rowtype = InvalidOid;
	if (model == NULL)
		return;
	lm->varlena = (model->typlen == -1 && !model->typbyval);
	typtype = get_typtype(model->state_type);
	if (typtype == TYPTYPE_COMPOSITE || typtype == TYPTYPE_DOMAIN)
		lm->rowtype = model->state_type;
}

/*
 * Whether a row of a share-locked page may belong to this partition,
 * judged from its twin id as stored.  An id compressed or moved out of
 * line (it takes a pathological id) is judged after detoasting, outside
 * the lock.
 */
static bool
dt_load_row_may_be_ours(HeapTuple tuple, TupleDesc desc, int partition,
						int partitions)
{
	bool		isnull;
	Pointer		id = DatumGetPointer(heap_getattr(tuple, DT_STATE_ATT_TWIN_ID,
												  desc, &isnull));

	if (partition < 0 || isnull || VARATT_IS_COMPRESSED(id) ||
		VARATT_IS_EXTERNAL(id))
		return true;
	return dt_partition_of(VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id),
						   partitions) == partition;
}

/*
 * The offsets of the rows of one page that are visible to the snapshot and
 * may be this partition's.  Visibility is decided under the share lock
 * (it may set hint bits); the rows are read after, with the page pinned
 * only, as a heap scan in page mode does: pruning, the only thing that
 * moves tuples, needs the page's cleanup lock, which our pin excludes.
 */
static int
dt_load_page_offsets(Relation rel, Buffer buffer, Snapshot snapshot,
					 int partition, int partitions, OffsetNumber *offsets)
{
	Page		page = BufferGetPage(buffer);
	TupleDesc	desc = RelationGetDescr(rel);
	OffsetNumber off;
	OffsetNumber maxoff;
	bool		all_visible;
	int			n = 0;

	LockBuffer(buffer, BUFFER_LOCK_SHARE);
	TestForOldSnapshot(snapshot, rel, page);
	maxoff = PageGetMaxOffsetNumber(page);
	all_visible = PageIsAllVisible(page) && !snapshot->takenDuringRecovery;
	for (off = FirstOffsetNumber; off <= maxoff; off = OffsetNumberNext(off))
	{
		HeapTupleData tuple;

		if (!dt_page_tuple(rel, buffer, off, &tuple))
			continue;
		if (!dt_load_row_may_be_ours(&tuple, desc, partition, partitions))
			continue;
		if (!all_visible &&
			!HeapTupleSatisfiesVisibility(&tuple, snapshot, buffer))
			continue;
		offsets[n++] = off;
	}
	LockBuffer(buffer, BUFFER_LOCK_UNLOCK);
	return n;
}

/* Deliver one visible row of a pinned page, if it is this partition's. */
static void
dt_load_row(DtDurableScan *scan, DtLoadModel *lm, Relation rel,
			Buffer buffer, OffsetNumber off, int partition, int partitions)
{
	TupleDesc	desc = RelationGetDescr(rel);
	HeapTupleData tuple;
	Datum		values[DT_STATE_NATTS];
	bool		nulls[DT_STATE_NATTS];
	text	   *twin_id;
	int32		model_id;

	if (!dt_page_tuple(rel, buffer, off, &tuple))
		return;					/* it was normal under the lock; our pin keeps it */
	heap_deform_tuple(&tuple, desc, values, nulls);
	/* NOT NULL columns: a NULL here is a row no query would join either */
	if (nulls[DT_STATE_ATT_MODEL_ID - 1] || nulls[DT_STATE_ATT_TWIN_ID - 1] ||
		nulls[DT_STATE_ATT_STATE - 1] || nulls[DT_STATE_ATT_EVENT_COUNT - 1] ||
		nulls[DT_STATE_ATT_UPDATED_AT - 1])
		return;
	twin_id = DatumGetTextPP(values[DT_STATE_ATT_TWIN_ID - 1]);
	if (partition >= 0 &&
		dt_partition_of(VARDATA_ANY(twin_id), VARSIZE_ANY_EXHDR(twin_id),
						partitions) != partition)
		return;
	model_id = DatumGetInt32(values[DT_STATE_ATT_MODEL_ID - 1]);
	if (model_id != lm->model_id)
		dt_load_model_lookup(lm, model_id);
	if (!lm->known)
		return;
	dt_durable_deliver(scan, model_id, twin_id, values[DT_STATE_ATT_STATE - 1],
					   DatumGetInt64(values[DT_STATE_ATT_EVENT_COUNT - 1]),
					   DatumGetTimestampTz(values[DT_STATE_ATT_UPDATED_AT - 1]),
					   lm->varlena, lm->rowtype);
}

/*
 * Call fn for the durable state of every twin of one worker partition (of
 * every partition: partition < 0), as
 * dt_durable_scan(partition, partitions, 0, ...) does, with the active
 * snapshot.  For workers, with the model cache refreshed just before
 * (dt_models_refresh).  fn runs in a memory context reset after
 * each page; the image is valid only during the call.
 */
void
dt_durable_load(int partition, int partitions, dt_durable_fn fn, void *arg)
{
	Relation	rel = table_open(dt_extension_relid("twin_state"), AccessShareLock);
	Snapshot	snapshot = GetActiveSnapshot();
	BufferAccessStrategy strategy;
	MemoryContext rows_cxt;
	MemoryContext old;
	DtDurableScan scan;
	DtLoadModel lm;
	BlockNumber nblocks;
	BlockNumber blkno;
	OffsetNumber offsets[MaxHeapTuplesPerPage];

	if (!dt_durable_shape_known(rel))
	{
		table_close(rel, AccessShareLock);
		dt_durable_scan(partition, partitions, 0, fn, arg);
		return;
	}
	scan.fn = fn;
	scan.arg = arg;
	memset(&scan.rt, 0, sizeof(scan.rt));
	memset(&lm, 0, sizeof(lm));
	nblocks = RelationGetNumberOfBlocks(rel);
	/*
	 * Through a ring of a few buffers, whatever the table's size (a
	 * sequential scan uses one only past a quarter of shared_buffers): at
	 * start-up, shared_buffers is memory no process has touched yet, and
	 * the first touch of the table's size in it cost more than the rest of
	 * the load (a million twins: 244 MB, most of the time of a cold
	 * count(*)).  The batches read the pages they update as they come.
	 */
	strategy = GetAccessStrategy(BAS_BULKREAD);
	rows_cxt = AllocSetContextCreate(CurrentMemoryContext,
									 "digitaltwin durable rows",
									 ALLOCSET_DEFAULT_SIZES);
	for (blkno = 0; blkno < nblocks; blkno++)
	{
		Buffer		buffer;
		int			n;
		int			i;

		CHECK_FOR_INTERRUPTS();
		buffer = ReadBufferExtended(rel, MAIN_FORKNUM, blkno, RBM_NORMAL, strategy);
		n = dt_load_page_offsets(rel, buffer, snapshot, partition, partitions,
								 offsets);
		old = MemoryContextSwitchTo(rows_cxt);
		for (i = 0; i < n; i++)
			dt_load_row(&scan, &lm, rel, buffer, offsets[i], partition, partitions);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rows_cxt);
		ReleaseBuffer(buffer);
	}
	MemoryContextDelete(rows_cxt);
	FreeAccessStrategy(strategy);
	table_close(rel, AccessShareLock);
}
