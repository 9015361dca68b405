/*-------------------------------------------------------------------------
 *
 * as_of.c
 *	  twins_as_of(): the twins of the models with history as they were at
 *	  a time, read from digitaltwin.state_history.
 *
 * A twin's state at time t is its history row with the latest valid_from
 * at or before t.  In SQL that is a DISTINCT ON over every such row, which
 * sorts them all, whole states included (over a million twins most of the
 * time went into that sort, spilling to disk).  Here one pass over each
 * partition keeps, per twin, only the time and the position (TID) of its
 * latest row so far, in a hash table; then the winners are fetched in
 * physical order, one partition at a time, and only they are copied out.
 * Memory: one hash entry per twin (about 80 bytes with its id), the price
 * of not sorting.
 *
 * The function reads the table as the caller: it checks the caller's
 * SELECT right on digitaltwin.state_history as a query would, and refuses
 * when row-level security is enabled on it rather than bypass a policy.
 * Partitions may have another column order (a DBA may have attached one):
 * columns are found by name in each.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/tidbitmap.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dt_internal.h"

/* columns of digitaltwin.state_history, found by name in each partition */
typedef enum
{
	ASOF_MODEL_ID,
	ASOF_MODEL,
	ASOF_TWIN_ID,
	ASOF_STATE,
	ASOF_EVENT_COUNT,
	ASOF_VALID_FROM,
	ASOF_NCOLS
} AsOfColumn;

static const char *const asof_column_names[ASOF_NCOLS] = {
	"model_id", "model", "twin_id", "state", "event_count", "valid_from"
};

/*
 * A twin's latest row at or before the time, so far: 32 bytes.  part is
 * kept in the key's padding and is not part of its identity.
 */
typedef struct AsOfKey
{
	const char *id;				/* the twin id's bytes, not terminated */
	int32		model_id;
	uint16		len;
	uint16		part;			/* not compared: index in the partition list */
} AsOfKey;

typedef struct AsOfEntry
{
	AsOfKey		key;
	TimestampTz valid_from;
	ItemPointerData tid;
	char		status;			/* simplehash's */
} AsOfEntry;

static inline uint32
asof_key_hash(AsOfKey key)
{
	return hash_combine(murmurhash32((uint32) key.model_id),
						hash_bytes((const unsigned char *) key.id, key.len));
}

static inline bool
asof_key_equal(AsOfKey a, AsOfKey b)
{
	return a.model_id == b.model_id && a.len == b.len &&
		memcmp(a.id, b.id, a.len) == 0;
}

#define SH_PREFIX		asof
#define SH_ELEMENT_TYPE AsOfEntry
#define SH_KEY_TYPE		AsOfKey
#define SH_KEY			key
#define SH_HASH_KEY(tb, key)	asof_key_hash(key)
#define SH_EQUAL(tb, a, b)	asof_key_equal(a, b)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* a partition of digitaltwin.state_history being read */
typedef struct AsOfPart
{
	Relation	rel;
	AttrNumber	attnum[ASOF_NCOLS];
	TIDBitmap  *winners;		/* its rows that are a twin's state at the time */
} AsOfPart;

/* twin ids are copied into blocks of this size, not palloc'd one by one */
#define ASOF_ID_BLOCK	(64 * 1024)

typedef struct AsOfIds
{
	char	   *block;
	Size		used;
} AsOfIds;

static const char *
asof_copy_id(AsOfIds *ids, const char *id, int len)
{
	char	   *copy;

	if (len > ASOF_ID_BLOCK / 4)
		return memcpy(palloc(len), id, len);
	if (ids->block == NULL || ids->used + len > ASOF_ID_BLOCK)
	{
		ids->block = palloc(ASOF_ID_BLOCK);
		ids->used = 0;
	}
	copy = ids->block + ids->used;
	ids->used += len;
	return memcpy(copy, id, len);
}

static void
asof_check_access(Oid relid)
{
	AclResult	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT);

	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, get_rel_name(relid));
	if (check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("twins_as_of() does not read digitaltwin.state_history under row-level security"),
				 errhint("Query digitaltwin.twin_history, which applies the policies, or disable row-level security on digitaltwin.state_history.")));
}

static void
asof_find_columns(AsOfPart *part)
{
	int			c;

	for (c = 0; c < ASOF_NCOLS; c++)
	{
		part->attnum[c] = get_attnum(RelationGetRelid(part->rel), asof_column_names[c]);
		if (part->attnum[c] == InvalidAttrNumber)
			elog(ERROR, "partition \"%s\" of digitaltwin.state_history has no column \"%s\"",
				 RelationGetRelationName(part->rel), asof_column_names[c]);
	}
}

/*
 * The leaf partitions of digitaltwin.state_history, locked as a query's
 * would be; a DBA may have partitioned one further.
 */
static List *
asof_open_partitions(Oid parent)
{
	List	   *relids = find_all_inheritors(parent, AccessShareLock, NULL);
	List	   *parts = NIL;
	ListCell   *lc;

	foreach(lc, relids)
	{
		AsOfPart   *part;

		char		relkind = get_rel_relkind(lfirst_oid(lc));

		if (relkind == RELKIND_PARTITIONED_TABLE)
			continue;
		/* a leaf that is not a table, say a foreign archive: not skipped */
		if (relkind != RELKIND_RELATION)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("twins_as_of() reads only tables, and partition \"%s\" of digitaltwin.state_history is not one",
							get_rel_name(lfirst_oid(lc))),
					 errhint("Query digitaltwin.twin_history, or detach that partition.")));
		if (list_length(parts) >= PG_UINT16_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("twins_as_of() reads at most %d partitions of digitaltwin.state_history",
							PG_UINT16_MAX)));
		part = palloc0(sizeof(AsOfPart));
		part->rel = table_open(lfirst_oid(lc), NoLock);
		asof_find_columns(part);
		parts = lappend(parts, part);
	}
	return parts;
}

/* the hash table's first size, at most (it grows past it as needed) */
#define ASOF_MAX_PRESIZE		(16 * 1024 * 1024)
#define ASOF_UNCOUNTED_PRESIZE	(1024 * 1024)

/*
 * The number of twins to size the hash table for, so that it seldom has to
 * grow (each growth rehashes every twin into a new table) and is not much
 * larger than needed (fresh memory is what this function spends most on):
 * the live twins of the database, when the workers count them, else the
 * partitions' row estimates (an upper bound) up to a million.
 */
static uint32
asof_expected_twins(AsOfPart **parts, int nparts)
{
	double		rows = 0;
	int			p;

	for (p = 0; p < nparts; p++)
		rows += Max(parts[p]->rel->rd_rel->reltuples, 0);
	if (dt_preloaded)
	{
		DtDatabase *db = dt_database_current();
		int64		twins = 0;
		int			i;

		for (i = 0; db != NULL && i < dt_shared->nworkers; i++)
		{
			SpinLockAcquire(&db->slots[i].mutex);
			twins += db->slots[i].twins;
			SpinLockRelease(&db->slots[i].mutex);
		}
		if (twins > 0)
			return (uint32) Min(Max(twins * 1.1, 1024), ASOF_MAX_PRESIZE);
	}
	/* not counted: an estimate of the rows, but not a big one at once */
	return (uint32) Min(Max(rows, 1024), ASOF_UNCOUNTED_PRESIZE);
}

/* First pass: each twin's latest row at or before the time, by position. */
static void
asof_scan_partition(asof_hash *latest, AsOfIds *ids, AsOfPart *part, int partno,
					TimestampTz at, Snapshot snapshot)
{
	TableScanDesc scan = table_beginscan(part->rel, snapshot, 0, NULL);
	TupleTableSlot *slot = table_slot_create(part->rel, NULL);
	AttrNumber	lastatt = 0;
	int			c;

	for (c = 0; c < ASOF_NCOLS; c++)
		lastatt = Max(lastatt, part->attnum[c]);

	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		TimestampTz valid_from;
		text	   *twin_id;
		AsOfKey		key;
		AsOfEntry  *entry;
		bool		found;

		CHECK_FOR_INTERRUPTS();
		slot_getsomeattrs(slot, lastatt);
		valid_from = DatumGetTimestampTz(slot->tts_values[part->attnum[ASOF_VALID_FROM] - 1]);
		if (valid_from > at)
			continue;
		twin_id = DatumGetTextPP(slot->tts_values[part->attnum[ASOF_TWIN_ID] - 1]);
		if (VARSIZE_ANY_EXHDR(twin_id) > PG_UINT16_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("twin id of %zu bytes in digitaltwin.state_history",
							VARSIZE_ANY_EXHDR(twin_id)),
					 errdetail("Twin ids have at most %d bytes; a row was written there by hand.",
							   DT_TWIN_ID_MAXLEN)));
		key.model_id = DatumGetInt32(slot->tts_values[part->attnum[ASOF_MODEL_ID] - 1]);
		key.len = VARSIZE_ANY_EXHDR(twin_id);
		key.id = VARDATA_ANY(twin_id);
		key.part = 0;

		entry = asof_insert(latest, key, &found);
		if (!found)
			entry->key.id = asof_copy_id(ids, key.id, key.len);
		/* a decompressed id (only a row written by hand has one) */
		if ((Pointer) twin_id != DatumGetPointer(slot->tts_values[part->attnum[ASOF_TWIN_ID] - 1]))
			pfree(twin_id);
		if (found && valid_from <= entry->valid_from)
			continue;
		entry->key.part = partno;
		entry->valid_from = valid_from;
		entry->tid = slot->tts_tid;
	}
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
}

/*
 * The winners' positions, per partition, in a TID bitmap, which hands them
 * back in physical order a page at a time.  It is given room enough never
 * to become lossy: a lossy page could not tell the winners from the rest.
 */
static void
asof_collect_winners(asof_hash *latest, AsOfPart **parts, int nparts)
{
	asof_iterator it;
	AsOfEntry  *entry;
	int			p;

	for (p = 0; p < nparts; p++)
		parts[p]->winners = tbm_create((long) Min(MaxAllocHugeSize / 2, LONG_MAX), NULL);
	asof_start_iterate(latest, &it);
	while ((entry = asof_iterate(latest, &it)) != NULL)
		tbm_add_tuples(parts[entry->key.part]->winners, &entry->tid, 1, false);
}

/* Second pass: fetch the winners and return the twins that had not ended. */
static void
asof_emit_partition(ReturnSetInfo *rsinfo, AsOfPart *part, Snapshot snapshot)
{
	TupleTableSlot *slot = table_slot_create(part->rel, NULL);
	TBMIterator *iterator = tbm_begin_iterate(part->winners);
	TBMIterateResult *page;

	while ((page = tbm_iterate(iterator)) != NULL)
	{
		int			i;

		Assert(page->ntuples >= 0 && !page->recheck);
		for (i = 0; i < page->ntuples; i++)
		{
			ItemPointerData tid;
			Datum		values[5];
			bool		nulls[5];
			int			c;

			CHECK_FOR_INTERRUPTS();
			ItemPointerSet(&tid, page->blockno, page->offsets[i]);
			if (!table_tuple_fetch_row_version(part->rel, &tid, snapshot, slot))
				elog(ERROR, "history row (%u,%u) of \"%s\" vanished under the same snapshot",
					 page->blockno, page->offsets[i], RelationGetRelationName(part->rel));
			slot_getallattrs(slot);
			if (slot->tts_isnull[part->attnum[ASOF_STATE] - 1])
				continue;		/* the twin had ended */
			for (c = ASOF_MODEL; c <= ASOF_VALID_FROM; c++)
			{
				values[c - ASOF_MODEL] = slot->tts_values[part->attnum[c] - 1];
				nulls[c - ASOF_MODEL] = slot->tts_isnull[part->attnum[c] - 1];
			}
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	tbm_end_iterate(iterator);
	ExecDropSingleTupleTableSlot(slot);
}

/*
 * twins_as_of(at timestamptz) RETURNS TABLE (model text, twin_id text,
 * state jsonb, event_count bigint, updated_at timestamptz)
 */
PG_FUNCTION_INFO_V1(digitaltwin_twins_as_of);

Datum
digitaltwin_twins_as_of(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(0);
	Oid			parent = dt_extension_relid("state_history");
	Snapshot	snapshot = GetActiveSnapshot();
	MemoryContext work_cxt;
	MemoryContext old_cxt;
	Relation	parent_rel;
	List	   *part_list;
	AsOfPart  **parts;
	asof_hash  *latest;
	AsOfIds		ids = {NULL, 0};
	int			nparts;
	int			p;

	InitMaterializedSRF(fcinfo, 0);
	asof_check_access(parent);

	/* the hash and the positions go at the end of the call, not the query */
	work_cxt = AllocSetContextCreate(CurrentMemoryContext, "twins_as_of",
									 ALLOCSET_DEFAULT_SIZES);
	old_cxt = MemoryContextSwitchTo(work_cxt);
	parent_rel = table_open(parent, AccessShareLock);
	part_list = asof_open_partitions(parent);
	nparts = list_length(part_list);
	parts = palloc(sizeof(AsOfPart *) * Max(nparts, 1));
	for (p = 0; p < nparts; p++)
		parts[p] = list_nth(part_list, p);

	latest = asof_create(work_cxt, asof_expected_twins(parts, nparts), NULL);
	for (p = 0; p < nparts; p++)
		asof_scan_partition(latest, &ids, parts[p], p, at, snapshot);
	asof_collect_winners(latest, parts, nparts);
	asof_destroy(latest);

	/* tuplestore_putvalues() copies each row into the query's store */
	for (p = 0; p < nparts; p++)
	{
		asof_emit_partition(rsinfo, parts[p], snapshot);
		table_close(parts[p]->rel, NoLock);
	}
	table_close(parent_rel, NoLock);
	MemoryContextSwitchTo(old_cxt);
	MemoryContextDelete(work_cxt);
	return (Datum) 0;
}
