/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared memory of digitaltwin: worker slots and the twin hash.
 *
 * Twins live in a table of our own (twin_table.c) whose entries are DSA
 * chunks, in an area that is created in place in the main shared memory
 * segment at postmaster start (as PG15's shared memory statistics do), so
 * it is reset by a crash-restart together with everything else;
 * dsa_set_size_limit() bounds it by digitaltwin.max_memory.  Each database
 * entry (DtDatabase, digitaltwin.max_databases of them) has its own table
 * of twins and its own dshash of counts per model: the databases share the
 * memory, never a table, so a twin is found only through its database's
 * entry.  A process works with one entry at a time, dt_db.
 *
 * Locking rules:
 *	- A twin entry is written only by the worker that owns its partition
 *	  (or, at start, by the worker loading every partition while the others
 *	  wait: rebuild.c), and only under its stripe's exclusive lock.
 *	- A state image of a new length is a new entry: the owner prepares the
 *	  chunk (header, id, image) unseen, links it in place of the old one
 *	  under the stripe's lock and frees the old one after.  Readers copy
 *	  what they need under the stripe's lock (shared), so they see one
 *	  whole state.
 *	- One stripe lock at a time; inside it only the DSA area's own lock
 *	  (twin_table.c).  counts_lock comes before the counts' dshash locks.
 *	- No user code and no SPI run while a stripe lock is held.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/memutils.h"

#include "dt_internal.h"

/*
 * DSA area placed in the main segment, room for every database's empty
 * tables (a few kB each) and more; further memory comes from DSM.
 */
#define DT_INPLACE_DSA_SIZE \
	((Size) 1024 * 1024 + (Size) dt_max_databases * 32 * 1024)

DtShared   *dt_shared = NULL;
DtDatabase *dt_db = NULL;
dsa_area   *dt_area = NULL;
static dshash_table *dt_counts = NULL;
static DtDatabase *attached_db = NULL;	/* whose counts dt_counts are */

/*
 * Twins per model, counted per worker partition: each worker counts its own
 * twins (and forgets them when it reloads its partition), while a limit
 * check adds up all partitions.  The same entry carries what the worker
 * tells of the model's events between commits (model_stats.c): how far
 * the batch in flight has got, and the rate.
 */
typedef struct DtCountKey
{
	int32		model_id;
	int32		partition;
} DtCountKey;

typedef struct DtCountEntry
{
	DtCountKey	key;
	int64		twins;
	int64		in_flight;		/* events applied by the uncommitted batch */
	TimestampTz window_start;	/* rate: events counted since then */
	int64		window_events;
	double		rate;			/* of the last window closed (>= 1 s) */
} DtCountEntry;

static const dshash_parameters dt_count_params = {
	sizeof(DtCountKey),
	sizeof(DtCountEntry),
	dshash_memcmp,
	dshash_memhash,
	0							/* tranche id, set at run time */
};

static void dt_store_out_of_memory(void) pg_attribute_noreturn();

/*
 * What one twin costs in the shared area besides its state: its entry's
 * header (27 bytes) and id (twin_table.c), and its share of the slots (a stripe keeps
 * 3/8 to 3/4 of them used: counted as two).  DSA rounds a chunk up to its
 * size class, which is not counted, as dshash's and the state chunk's
 * rounding were not before.
 */
#define DT_TWIN_OVERHEAD(id_len) \
	(offsetof(DtTwinEntry, data) + (id_len) + 2 * sizeof(dsa_pointer))

/*
 * Database entries start at multiples of DT_STRIPE_SIZE from the segment's
 * start (which ShmemInitStruct aligns to PG_CACHE_LINE_SIZE), so that each
 * stripe of their tables has its cache line.
 */
static Size
dt_database_size(void)
{
	return TYPEALIGN(DT_STRIPE_SIZE,
					 add_size(offsetof(DtDatabase, slots),
							  mul_size(sizeof(DtWorkerSlot), Max(dt_workers, 1))));
}

static Size
dt_databases_offset(void)
{
	return TYPEALIGN(DT_STRIPE_SIZE, sizeof(DtShared));
}

static Size
dt_inplace_offset(void)
{
	return add_size(dt_databases_offset(),
					mul_size(dt_database_size(), dt_max_databases));
}

static Size
dt_shmem_size(void)
{
	return add_size(dt_inplace_offset(), DT_INPLACE_DSA_SIZE);
}

static void *
dt_inplace_area(void)
{
	return (char *) dt_shared + dt_inplace_offset();
}

DtDatabase *
dt_database_entry(int index)
{
	Assert(index >= 0 && index < dt_shared->ndatabases);
	return (DtDatabase *) ((char *) dt_shared + dt_databases_offset() +
						   index * dt_shared->database_size);
}

void
dt_shmem_request(void)
{
	RequestAddinShmemSpace(dt_shmem_size());
}

static void
dt_database_init(DtDatabase *db, dsa_area *area)
{
	dshash_parameters params;
	dshash_table *table;
	int			i;

	memset(db, 0, dt_shared->database_size);
	pg_atomic_init_u64(&db->reload_generation, 0);
	pg_atomic_init_u32(&db->reload_pending, 0);
	pg_atomic_init_u64(&db->queue_generation, DT_GENERATION_UNKNOWN);
	ConditionVariableInit(&db->progress_cv);
	SpinLockInit(&db->start_load_mutex);
	ConditionVariableInit(&db->start_load_cv);
	LWLockInitialize(&db->counts_lock, dt_shared->tranche_id);
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &db->slots[i];

		SpinLockInit(&slot->mutex);
		pg_atomic_init_u64(&slot->events_processed, 0);
		pg_atomic_init_u64(&slot->dead_letters, 0);
		pg_atomic_init_u64(&slot->alerts, 0);
		pg_atomic_init_u64(&slot->batches, 0);
	}

	dt_table_init(&db->twins, dt_shared->tranche_id);
	params = dt_count_params;
	params.tranche_id = dt_shared->tranche_id;
	table = dshash_create(area, &params, NULL);
	db->counts_handle = dshash_get_hash_table_handle(table);
	dshash_detach(table);
}

void
dt_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	dt_shared = ShmemInitStruct("digitaltwin", dt_shmem_size(), &found);
	if (!found)
	{
		dsa_area   *area;
		int			i;

		memset(dt_shared, 0, sizeof(DtShared));
		dt_shared->tranche_id = LWLockNewTrancheId();
		dt_shared->nworkers = dt_workers;
		dt_shared->ndatabases = dt_max_databases;
		dt_shared->database_size = dt_database_size();
		LWLockInitialize(&dt_shared->lock, dt_shared->tranche_id);
		ConditionVariableInit(&dt_shared->launcher_cv);

		/*
		 * The postmaster must not create DSM segments, so the initial hash
		 * tables have to fit in the in-place part: keep the limit at that
		 * size while creating them, then raise it to the configured
		 * maximum.
		 */
		area = dsa_create_in_place(dt_inplace_area(), DT_INPLACE_DSA_SIZE,
								   dt_shared->tranche_id, NULL);
		dsa_pin(area);
		dsa_set_size_limit(area, DT_INPLACE_DSA_SIZE);
		for (i = 0; i < dt_shared->ndatabases; i++)
			dt_database_init(dt_database_entry(i), area);
		dsa_set_size_limit(area, (size_t) dt_max_memory_mb * 1024 * 1024);
		dsa_detach(area);
	}
	LWLockRelease(AddinShmemInitLock);

	LWLockRegisterTranche(dt_shared->tranche_id, "digitaltwin");
}

/*
 * Attach this process to the store of its database, dt_db: the area once,
 * the counts again whenever dt_db is another entry.
 */
void
dt_attach_store(void)
{
	dshash_parameters params;
	MemoryContext old;

	dt_require_preload();
	Assert(dt_db != NULL);
	if (dt_counts != NULL && attached_db == dt_db)
		return;

	old = MemoryContextSwitchTo(TopMemoryContext);
	if (dt_area == NULL)
	{
		LWLockRegisterTranche(dt_shared->tranche_id, "digitaltwin");
		dt_area = dsa_attach_in_place(dt_inplace_area(), NULL);
		dsa_pin_mapping(dt_area);
	}
	if (dt_counts != NULL)
	{
		dshash_detach(dt_counts);
		dt_counts = NULL;
	}
	params = dt_count_params;
	params.tranche_id = dt_shared->tranche_id;
	dt_counts = dshash_attach(dt_area, &params, dt_db->counts_handle, NULL);
	attached_db = dt_db;
	MemoryContextSwitchTo(old);
}

void
dt_make_key(DtTwinKey *key, int32 model_id, const char *twin_id, int len)
{
	Assert(len <= DT_TWIN_ID_MAXLEN);
	memset(key, 0, sizeof(DtTwinKey));
	key->model_id = model_id;
	memcpy(key->twin_id, twin_id, len);
}

/* A twin's key for the shared table. */
static void
dt_table_key_of(DtTableKey *tkey, const DtTwinKey *key)
{
	dt_table_key(tkey, key->model_id, key->twin_id, strlen(key->twin_id));
}

/* The twin id of an entry, not NUL-terminated: entry->id_len bytes. */
const char *
dt_entry_twin_id(const DtTwinEntry *entry)
{
	return entry->data;
}

/* A read-only scan of dt_db's twins, one stripe locked at a time. */
void
dt_store_scan_begin(DtTableScan *scan)
{
	dt_table_scan_init(scan, dt_area, &dt_db->twins, false);
}

/*
 * The partition (worker) that owns a twin.  Only the twin id is hashed, so
 * the assignment does not depend on anything a transaction could change.
 */
int
dt_partition_of(const char *twin_id, int len, int partitions)
{
	uint32		h;

	if (partitions <= 1)
		return 0;
	h = hash_bytes((const unsigned char *) twin_id, len);
	return (int) (h % (uint32) partitions);
}

static int
dt_entry_partition(const DtTwinEntry *entry, int partitions)
{
	return dt_partition_of(entry->data, entry->id_len, partitions);
}

static void
dt_slot_account(DtWorkerSlot *slot, int64 twins, int64 bytes)
{
	SpinLockAcquire(&slot->mutex);
	slot->twins += twins;
	slot->memory_bytes += bytes;
	SpinLockRelease(&slot->mutex);
}

/*
 * A twin's entry by model and id, or NULL.  The entry's stripe lock is held
 * (shared) until dt_store_release(): copy what is needed and release,
 * calling no user code in between.
 */
DtTwinEntry *
dt_store_find(int32 model_id, const char *twin_id, int idlen)
{
	DtTableKey	tkey;

	dt_table_key(&tkey, model_id, twin_id, idlen);
	return dt_table_find(dt_area, &dt_db->twins, &tkey, LW_SHARED);
}

void
dt_store_release(DtTwinEntry *entry)
{
	dt_table_release(&dt_db->twins, entry);
}

bool
dt_store_fetch(const DtTwinKey *key, MemoryContext cxt, char **image,
			   Size *len, int64 *event_count)
{
	DtTwinEntry *entry;

	entry = dt_store_find(key->model_id, key->twin_id, strlen(key->twin_id));
	if (entry == NULL)
		return false;
	/* palloc may ERROR; the abort path releases the stripe's lock */
	*image = MemoryContextAlloc(cxt, entry->state_len);
	memcpy(*image, DT_ENTRY_STATE(entry), entry->state_len);
	*len = entry->state_len;
	*event_count = entry->event_count;
	dt_store_release(entry);
	return true;
}

/*
 * Unlink and free, in an exclusive scan of dt_db's twins, every entry that
 * 'drop' picks (NULL: all); returns how many twins and bytes went.
 */
static void
dt_store_drop_where(bool (*drop) (const DtTwinEntry *entry, void *arg),
					void *arg, int64 *twins, int64 *bytes)
{
	DtTableScan scan;
	DtTwinEntry *entry;

	*twins = *bytes = 0;
	dt_table_scan_init(&scan, dt_area, &dt_db->twins, true);
	while ((entry = dt_table_scan_next(&scan)) != NULL)
	{
		if (drop != NULL && !drop(entry, arg))
			continue;
		(*twins)++;
		*bytes += entry->state_len + DT_TWIN_OVERHEAD(entry->id_len);
		dsa_free(dt_area, dt_table_scan_unlink(&scan));
	}
}

typedef struct DtDropArg
{
	int			partition;
	int			partitions;
	bool		(*is_live) (int32 model_id);
} DtDropArg;

static bool
dt_entry_in_partition(const DtTwinEntry *entry, void *arg)
{
	DtDropArg  *d = arg;

	return dt_entry_partition(entry, d->partitions) == d->partition;
}

/*
 * Forget every twin of one partition.  A worker does this when it starts,
 * before reloading its twins from the durable table: whatever shared memory
 * held may predate the last commit of the worker's previous incarnation.
 */
void
dt_store_purge_partition(int partition, int partitions)
{
	DtDropArg	d = {partition, partitions, NULL};
	DtWorkerSlot *slot = &dt_db->slots[partition];
	int64		twins;
	int64		bytes;

	dt_store_drop_where(dt_entry_in_partition, &d, &twins, &bytes);

	SpinLockAcquire(&slot->mutex);
	slot->twins = 0;
	slot->memory_bytes = 0;
	SpinLockRelease(&slot->mutex);
}

/*
 * Forget every twin of dt_db and its counts: the launcher does this when
 * the database is no longer served (extension or database dropped), so
 * that its memory goes back to the other databases at once.  No worker of
 * the database runs.
 */
void
dt_store_purge_database(void)
{
	dshash_seq_status status;
	DtCountEntry *count;
	int64		twins;
	int64		bytes;
	int			i;

	dt_store_drop_where(NULL, NULL, &twins, &bytes);
	dt_table_reset(dt_area, &dt_db->twins);

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dshash_seq_init(&status, dt_counts, true);
	while ((count = dshash_seq_next(&status)) != NULL)
		dshash_delete_current(&status);
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);

	for (i = 0; i < dt_shared->nworkers; i++)
	{
		DtWorkerSlot *slot = &dt_db->slots[i];

		SpinLockAcquire(&slot->mutex);
		slot->twins = 0;
		slot->memory_bytes = 0;
		slot->store_extension = InvalidOid;
		slot->load_epoch++;
		SpinLockRelease(&slot->mutex);
	}
}

/*
 * Forget what a worker slot says of its last database (its entry is being
 * freed, its worker is gone, its twins purged), so that the next database
 * given the entry starts from zero.
 */
void
dt_slot_clear(DtWorkerSlot *slot)
{
	SpinLockAcquire(&slot->mutex);
	slot->extension_gone = false;
	memset(slot->stopped_events, 0, sizeof(slot->stopped_events));
	slot->stopped_extension = InvalidOid;
	slot->fetches = slot->covered_fetch = slot->message_batches = 0;
	slot->covered_through = 0;
	slot->last_batch_at = 0;
	slot->window_start = 0;
	slot->window_events = 0;
	slot->events_per_second = 0;
	slot->last_error[0] = '\0';
	SpinLockRelease(&slot->mutex);
	pg_atomic_write_u64(&slot->events_processed, 0);
	pg_atomic_write_u64(&slot->dead_letters, 0);
	pg_atomic_write_u64(&slot->alerts, 0);
	pg_atomic_write_u64(&slot->batches, 0);
}

static bool
dt_entry_of_dropped_model(const DtTwinEntry *entry, void *arg)
{
	DtDropArg  *d = arg;

	return dt_entry_partition(entry, d->partitions) == d->partition &&
		!d->is_live(entry->model_id);
}

/*
 * Forget the twins of models that no longer exist (drop_model).
 */
void
dt_store_purge_models(int partition, int partitions,
					  bool (*is_live) (int32 model_id))
{
	DtDropArg	d = {partition, partitions, is_live};
	int64		twins;
	int64		bytes;

	dt_store_drop_where(dt_entry_of_dropped_model, &d, &twins, &bytes);
	dt_slot_account(&dt_db->slots[partition], -twins, -bytes);
}

/*
 * Allocate a DSA chunk holding a copy of a state image.  Fails with a clear
 * ERROR when digitaltwin.max_memory is exhausted; callers run inside a
 * transaction that has not committed yet, so nothing is lost.
 */
static void
dt_store_out_of_memory(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("digitaltwin shared memory for twins is exhausted"),
			 errdetail("digitaltwin.max_memory is %d MB; events that need more are dead-lettered.",
					   dt_max_memory_mb),
			 errhint("Increase digitaltwin.max_memory, or end twins by returning NULL from the model.")));
}

/*
 * digitaltwin.max_memory_per_database: the twins of one database may not
 * take more, so that a database filling its share leaves the others
 * theirs.  Checked as a batch prepares its new images: the memory its
 * database's workers account for (published twins), plus what the batch
 * has grown so far, plus the next twin's growth (a new twin: its state and
 * overhead; a changed one: what its state grew).  Each worker checks its
 * own batch, so the database can go past the limit by what its workers'
 * batches in flight add.
 */
static int64 quota_batch_bytes = 0;

void
dt_store_quota_begin(void)
{
	quota_batch_bytes = 0;
}

/* What a twin costs in shared memory besides its state. */
Size
dt_store_twin_overhead(int id_len)
{
	return DT_TWIN_OVERHEAD(id_len);
}

void
dt_store_quota_check(int64 growth)
{
	int64		quota = (int64) dt_max_memory_per_database_mb * 1024 * 1024;
	int64		used = 0;
	int			i;

	if (quota == 0 || growth <= 0)
		return;
	for (i = 0; i < dt_shared->nworkers; i++)
	{
		SpinLockAcquire(&dt_db->slots[i].mutex);
		used += dt_db->slots[i].memory_bytes;
		SpinLockRelease(&dt_db->slots[i].mutex);
	}
	if (used + quota_batch_bytes + growth > quota)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("digitaltwin shared memory for the twins of database \"%s\" is exhausted",
						dt_db->name),
				 errdetail("digitaltwin.max_memory_per_database is %d MB; events that need more are dead-lettered.",
						   dt_max_memory_per_database_mb),
				 errhint("Increase digitaltwin.max_memory_per_database, or end twins by returning NULL from the model.")));
	quota_batch_bytes += growth;
}

/*
 * Before commit: prepare a twin's entry.  The caller fills what the batch
 * decides after commit.
 */
dsa_pointer
dt_store_alloc_entry(const DtTwinKey *key, const char *image, Size len)
{
	DtTableKey	tkey;
	dsa_pointer dp;

	dt_table_key_of(&tkey, key);
	dp = dt_table_entry_alloc(dt_area, &tkey, image, len);
	if (!DsaPointerIsValid(dp))
		dt_store_out_of_memory();
	return dp;
}

/* Count a twin linked (replacing 'old' if 'replaced') in a worker's slot. */
static void
dt_store_account_link(DtWorkerSlot *slot, uint32 state_len, int id_len,
					  dsa_pointer replaced, const DtTwinEntry *old)
{
	if (DsaPointerIsValid(replaced))
	{
		dsa_free(dt_area, replaced);
		dt_slot_account(slot, 0, (int64) state_len - (int64) old->state_len);
	}
	else
		dt_slot_account(slot, 1, state_len + DT_TWIN_OVERHEAD(id_len));
}

/*
 * Load one twin from the durable state (worker start): one operation on
 * the table per twin (dt_table_load).  A reader does not take the
 * partition from shared memory before it is loaded whole (load_epoch).
 */
void
dt_store_load_twin(int32 model_id, const char *twin_id, int idlen,
				   const char *image, Size len, uint16 state_version,
				   int64 event_count, TimestampTz updated_at,
				   DtWorkerSlot *slot)
{
	DtTableKey	tkey;
	DtTwinEntry header;
	DtTwinEntry old;
	dsa_pointer chunk;
	dsa_pointer replaced;

	/* a row written by hand: no event could have made that twin */
	if (idlen > DT_TWIN_ID_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("durable state of a twin of model %d has an id of %d bytes",
						model_id, idlen),
				 errdetail("A twin id has at most %d bytes; the id starts with \"%.*s\".",
						   DT_TWIN_ID_MAXLEN,
						   pg_mbcliplen(twin_id, idlen, DT_TWIN_ID_MAXLEN), twin_id),
				 errhint("Repair or delete the row of digitaltwin.twin_state.")));
	dt_table_key(&tkey, model_id, twin_id, idlen);
	header.state_version = state_version;
	header.event_count = event_count;
	header.updated_at = updated_at;
	if (!dt_table_load(dt_area, &dt_db->twins, &tkey, &header, image, len,
					   &chunk, &replaced, &old))
		dt_store_out_of_memory();
	/* (a twin already there: one a batch published before a rebuild) */
	dt_store_account_link(slot, (uint32) len, idlen, replaced, &old);
}

/*
 * Before commit: have a slot promised to a twin's next entry, so that
 * publication after commit needs no memory (dt_store_unreserve() gives it
 * back if the batch fails).
 */
void
dt_store_reserve_entry(const DtTwinKey *key)
{
	DtTableKey	tkey;

	dt_table_key_of(&tkey, key);
	if (!dt_table_reserve(dt_area, &dt_db->twins, &tkey))
		dt_store_out_of_memory();
}

/*
 * After commit: overwrite a twin's state with an image of the same length,
 * in its entry.  Readers copy an image only under the stripe's lock, which
 * is held exclusively here, so they see the old state or the new one whole.
 * Needs no memory: a twin whose state keeps its size goes on being updated
 * when digitaltwin.max_memory is exhausted.
 */
void
dt_store_overwrite(const DtTwinKey *key, const char *image, Size len,
				   uint16 state_version, int64 event_count, TimestampTz updated_at)
{
	DtTableKey	tkey;
	DtTwinEntry *entry;

	dt_table_key_of(&tkey, key);
	entry = dt_table_find(dt_area, &dt_db->twins, &tkey, LW_EXCLUSIVE);
	if (entry == NULL || entry->state_len != len)
		elog(PANIC, "digitaltwin: twin entry to overwrite vanished or changed size");
	memcpy(DT_ENTRY_STATE(entry), image, len);
	entry->state_version = state_version;
	entry->event_count = event_count;
	entry->updated_at = updated_at;
	dt_table_release(&dt_db->twins, entry);
}

/*
 * After commit: link a prepared entry (dt_store_alloc_entry), in place of
 * the twin's old one if it had one.  Cannot fail: the chunk exists, and its
 * slot was promised (dt_store_reserve_entry).
 */
void
dt_store_install(dsa_pointer chunk, uint16 state_version, int64 event_count,
				 TimestampTz updated_at, DtWorkerSlot *slot)
{
	DtTwinEntry *entry = dsa_get_address(dt_area, chunk);
	uint32		state_len = entry->state_len;
	int			id_len = entry->id_len;
	DtTwinEntry old;
	dsa_pointer replaced;

	/* not linked yet: no other process can see it (nor, once linked, ours) */
	entry->state_version = state_version;
	entry->event_count = event_count;
	entry->updated_at = updated_at;
	replaced = dt_table_link(dt_area, &dt_db->twins, chunk, &old);
	dt_store_account_link(slot, state_len, id_len, replaced, &old);
}

/*
 * After commit: a twin ended (its model returned NULL).
 */
void
dt_store_remove(const DtTwinKey *key, DtWorkerSlot *slot)
{
	DtTableKey	tkey;
	DtTwinEntry old;
	dsa_pointer chunk;

	dt_table_key_of(&tkey, key);
	chunk = dt_table_unlink(dt_area, &dt_db->twins, &tkey, &old);
	if (!DsaPointerIsValid(chunk))
		return;
	dsa_free(dt_area, chunk);
	dt_slot_account(slot, -1, -(int64) (old.state_len + DT_TWIN_OVERHEAD(old.id_len)));
}

/*
 * After abort: give back the slot promised to a twin of the failed batch.
 */
void
dt_store_unreserve(const DtTwinKey *key)
{
	DtTableKey	tkey;

	dt_table_key_of(&tkey, key);
	dt_table_unreserve(&dt_db->twins, &tkey);
}

/* ----------------------------------------------------------------
 * Twins per model
 * ----------------------------------------------------------------
 */

static int64
dt_twin_count_get(int32 model_id, int partition)
{
	DtCountKey	key = {model_id, partition};
	DtCountEntry *entry;
	int64		twins = 0;

	entry = dshash_find(dt_counts, &key, false);
	if (entry != NULL)
	{
		twins = entry->twins;
		dshash_release_lock(dt_counts, entry);
	}
	return twins;
}

static void
dt_count_entry_init(DtCountEntry *entry)
{
	entry->twins = 0;
	entry->in_flight = 0;
	entry->window_start = 0;
	entry->window_events = 0;
	entry->rate = 0;
}

static void
dt_twin_count_add_locked(int32 model_id, int partition, int64 delta)
{
	DtCountKey	key = {model_id, partition};
	DtCountEntry *entry;
	bool		found;

	entry = dshash_find_or_insert(dt_counts, &key, &found);
	if (!found)
		dt_count_entry_init(entry);
	entry->twins += delta;
	dshash_release_lock(dt_counts, entry);
}

/*
 * Count one more twin of a model in a partition, unless the model already
 * has 'limit' twins over all partitions (limit 0: no limit).  The check and
 * the increment happen under counts_lock, so that concurrent workers cannot
 * together go past the limit.  Lock order: counts_lock, then one dshash
 * partition lock at a time.
 */
bool
dt_twin_count_reserve(int32 model_id, int partition, int partitions, int64 limit)
{
	int64		total = 0;
	int			p;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	if (limit > 0)
	{
		for (p = 0; p < partitions; p++)
			total += dt_twin_count_get(model_id, p);
		if (total >= limit)
		{
			LWLockRelease(&dt_db->counts_lock);
			return false;
		}
	}
	dt_twin_count_add_locked(model_id, partition, 1);
	LWLockRelease(&dt_db->counts_lock);
	return true;
}

void
dt_twin_count_add(int32 model_id, int partition, int64 delta)
{
	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dt_twin_count_add_locked(model_id, partition, delta);
	LWLockRelease(&dt_db->counts_lock);
}

/*
 * Forget a partition's counts: of every model (is_live NULL: the worker is
 * reloading its partition), or of the models that no longer exist.
 */
void
dt_twin_count_forget(int partition, bool (*is_live) (int32 model_id))
{
	dshash_seq_status status;
	DtCountEntry *entry;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	dshash_seq_init(&status, dt_counts, true);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		if (entry->key.partition == partition &&
			(is_live == NULL || !is_live(entry->key.model_id)))
			dshash_delete_current(&status);
	}
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);
}

/* ----------------------------------------------------------------
 * Events of each model between commits (model_stats.c)
 * ----------------------------------------------------------------
 */

/*
 * A worker tells how its batch in flight is going: per model, the events
 * applied so far (in_flight, 0 once the batch has ended) and the events
 * to add to the rate's window (negative when a batch rolled back what it
 * had told).  A window closes once it is a second old.
 */
void
dt_model_progress_publish(int partition, const DtModelProgress *progress, int n)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	LWLockAcquire(&dt_db->counts_lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		DtCountKey	key = {progress[i].model_id, partition};
		DtCountEntry *entry;
		bool		found;

		entry = dshash_find_or_insert(dt_counts, &key, &found);
		if (!found)
			dt_count_entry_init(entry);
		entry->in_flight = progress[i].in_flight;
		if (entry->window_start == 0)
			entry->window_start = now;
		entry->window_events = Max(entry->window_events + progress[i].new_events, 0);
		if (TimestampDifferenceExceeds(entry->window_start, now, 1000))
		{
			entry->rate = entry->window_events /
				((now - entry->window_start) / (double) USECS_PER_SEC);
			entry->window_start = now;
			entry->window_events = 0;
		}
		dshash_release_lock(dt_counts, entry);
	}
	LWLockRelease(&dt_db->counts_lock);
}

/*
 * What shared memory knows of each model of this database, per partition:
 * twins, events in flight and rate.  The rate is that of the last window
 * closed, unless that is more than two seconds ago (no batch has told
 * anything since: the open window's own rate, which falls towards 0 as
 * the model stays idle) or no window has closed yet (the first second of
 * a batch: the open window's rate so far).
 */
int
dt_model_live_collect(DtModelLive **out)
{
	TimestampTz now = GetCurrentTimestamp();
	dshash_seq_status status;
	DtCountEntry *entry;
	int			n = 0;
	int			size = 16;
	DtModelLive *rows = palloc(sizeof(DtModelLive) * size);

	dt_attach_store();
	LWLockAcquire(&dt_db->counts_lock, LW_SHARED);
	dshash_seq_init(&status, dt_counts, false);
	while ((entry = dshash_seq_next(&status)) != NULL)
	{
		DtModelLive *row;

		if (n == size)
		{
			size *= 2;
			rows = repalloc(rows, sizeof(DtModelLive) * size);
		}
		row = &rows[n++];
		row->model_id = entry->key.model_id;
		row->partition = entry->key.partition;
		row->twins = entry->twins;
		row->in_flight = entry->in_flight;
		if (entry->window_start == 0 || now <= entry->window_start)
			row->events_per_second = 0;
		else if (entry->rate > 0 &&
				 !TimestampDifferenceExceeds(entry->window_start, now, 2000))
			row->events_per_second = entry->rate;
		else
			row->events_per_second = entry->window_events /
				((now - entry->window_start) / (double) USECS_PER_SEC);
	}
	dshash_seq_term(&status);
	LWLockRelease(&dt_db->counts_lock);
	*out = rows;
	return n;
}
